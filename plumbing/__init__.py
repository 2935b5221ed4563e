"""The shared bottom of the toolkit: errors meant for the user, the one way every command
fails, and files and folders written whole or not at all.

Both `data_prep` and `gpt` import it; it imports only the standard library, so gpt-prepare
runs without torch and every command fails the same way.
"""
