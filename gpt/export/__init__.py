"""gpt-export: a trained model written as a folder other tools load (`write.export_model`);
the folder's format is `gpt.store.export_folder`."""
