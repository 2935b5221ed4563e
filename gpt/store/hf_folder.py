"""The Hugging Face folder: a model as `transformers` loads it with no code of ours, as one of
its standard architectures, and such a folder (ours, or one transformers saved) read back.

    DIR/config.json             the architecture and its shape, in the fields transformers reads
                                (and the rotary fields older versions read); ours also say
                                "chargpt": {"format": "chargpt-hf", "version": 1, "source": ...}
    DIR/generation_config.json  bos, eos and pad: the end-of-text id, so generation stops there
    DIR/model.safetensors       the weights by transformers' names, fp32, metadata {"format": "pt"}
    DIR/tokenizer.json          the vocabulary, as gpt-prepare wrote it (a `tokenizers` file)
    DIR/tokenizer_config.json   PreTrainedTokenizerFast, <|endoftext|> as bos and eos, the context

Learned positions are GPT-2 and rotary positions GPT-NeoX with a sequential residual and the
whole head rotated: both compute what our model computes, layer for layer, and differ only in
how three things are stored (GPT-2's Conv1D weights are (in, out), ours (out, in); NeoX's
fused projection is laid out per head, [q_h, k_h, v_h], ours [all q, all k, all v]; a layer
we build without bias has a zero bias there). `PAIRS` holds that correspondence once, for
both directions. What neither architecture expresses (the bigram table, qk-norm, a logit
soft-cap) is refused by name, before anything is written.

Reading maps a folder back to our names and a `ModelConfig` (with biases: transformers'
layers always have them), as the state a checkpoint holds, so every path that takes a
checkpoint's state (sampling, evaluation, --init-from, a LoRA run's base) takes it too. What
our model cannot compute exactly (another architecture, a parallel residual, partial or
scaled rotary, another layer-norm epsilon or attention scale, a tokenizer our reader cannot
represent) is one line saying so.

The files are written here, as JSON and safetensors, not by transformers: it is a large
optional extra (pip install '.[hf]'), needed to use the folder, not to make it.
"""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import torch

from data_prep import Tokenizer

from ..config import ModelConfig
from .checkpoint import plain_state_dict
from .export_folder import WEIGHTS, ExportError, safetensors_module
from .layout import CONFIG_FILE, TOKENIZER_FILE

HF_FORMAT = "chargpt-hf"
HF_VERSION = 1
MARK = "chargpt"  # config.json's key for what only this toolkit reads: the format and where the export came from
CONFIG, GENERATION_CONFIG = CONFIG_FILE, "generation_config.json"
TOKENIZER, TOKENIZER_CONFIG = TOKENIZER_FILE, "tokenizer_config.json"
FILES = (CONFIG, GENERATION_CONFIG, WEIGHTS, TOKENIZER, TOKENIZER_CONFIG)
OTHER_WEIGHTS = ("model.safetensors.index.json", "pytorch_model.bin")  # what transformers may save instead
EOT, UNK = "<|endoftext|>", "<|unk|>"
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which every norm of our model uses
# ours -> transformers' ACT2FN name. "gelu_new" is the tanh form written out; it equals torch's
# approximate="tanh" within rounding (5e-7 apart at most), and every transformers version has it
ACTIVATION_OUT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu2": "relu2"}
ACTIVATION_IN = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu2": "relu2"}
GPT2, NEOX = "gpt2", "gpt_neox"
CLASS_NAME = {GPT2: "GPT2LMHeadModel", NEOX: "GPTNeoXForCausalLM"}
PREFIX = {GPT2: "transformer.", NEOX: "gpt_neox."}
HEAD = {GPT2: "lm_head.weight", NEOX: "embed_out.weight"}  # transformers 5 saves NeoX's head by its old name too
# layouts: as it is; (out, in) <-> (in, out); [all q, all k, all v] <-> [q_h, k_h, v_h] per head
PLAIN, TRANSPOSED, PER_HEAD = "plain", "transposed", "per_head"
# (our layer, theirs, layout of the weight; a bias is 1-D, so transposing leaves it as it is)
LAYERS = {
    GPT2: [("ln1", "ln_1", PLAIN), ("attn.qkv", "attn.c_attn", TRANSPOSED), ("attn.proj", "attn.c_proj", TRANSPOSED),
           ("ln2", "ln_2", PLAIN), ("mlp.fc", "mlp.c_fc", TRANSPOSED), ("mlp.proj", "mlp.c_proj", TRANSPOSED)],
    NEOX: [("ln1", "input_layernorm", PLAIN), ("attn.qkv", "attention.query_key_value", PER_HEAD),
           ("attn.proj", "attention.dense", PLAIN), ("ln2", "post_attention_layernorm", PLAIN),
           ("mlp.fc", "mlp.dense_h_to_4h", PLAIN), ("mlp.proj", "mlp.dense_4h_to_h", PLAIN)],
}
BLOCKS = {GPT2: "transformer.h", NEOX: "gpt_neox.layers"}
FINAL_NORM = {GPT2: "transformer.ln_f", NEOX: "gpt_neox.final_layer_norm"}
# buffers older versions saved beside the weights (causal masks, rotary frequencies): no parameters
BUFFERS = (".attn.bias", ".attn.masked_bias", ".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq")


class HFFolderError(ExportError):
    """A model that no standard transformers architecture expresses, or a Hugging Face folder
    that this toolkit cannot read exactly."""


# -- the correspondence --------------------------------------------------------------------------
def architecture(cfg: ModelConfig) -> str:
    return GPT2 if cfg.pos == "learned" else NEOX


def pairs(arch: str, cfg: ModelConfig) -> list[tuple[str, str, str]]:
    """(our name, transformers' name, layout) of every tensor the architecture's file holds for
    a model of shape `cfg` (with every bias: transformers' layers have them)."""
    found = [("wte.weight", "transformer.wte.weight" if arch == GPT2 else "gpt_neox.embed_in.weight", PLAIN)]
    if arch == GPT2:
        found.append(("wpe.weight", "transformer.wpe.weight", PLAIN))
    for i in range(cfg.n_layer):
        for ours, theirs, layout in LAYERS[arch]:
            found.append((f"blocks.{i}.{ours}.weight", f"{BLOCKS[arch]}.{i}.{theirs}.weight", layout))
            found.append((f"blocks.{i}.{ours}.bias", f"{BLOCKS[arch]}.{i}.{theirs}.bias",
                          PER_HEAD if layout == PER_HEAD else PLAIN))
    found += [("ln_f.weight", f"{FINAL_NORM[arch]}.weight", PLAIN), ("ln_f.bias", f"{FINAL_NORM[arch]}.bias", PLAIN)]
    if not cfg.tie_weights:
        found.append(("head.weight", HEAD[arch], PLAIN))
    return found


def to_theirs(t: torch.Tensor, layout: str, n_head: int) -> torch.Tensor:
    if layout == TRANSPOSED:
        return t.t()
    if layout == PER_HEAD:  # (3, nh, hs, ...) -> (nh, 3, hs, ...): each head's q, k and v rows together
        return t.reshape(3, n_head, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)
    return t


def to_ours(t: torch.Tensor, layout: str, n_head: int) -> torch.Tensor:
    if layout == TRANSPOSED:
        return t.t()
    if layout == PER_HEAD:
        return t.reshape(n_head, 3, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)
    return t


# -- writing -------------------------------------------------------------------------------------
# the ModelConfig fields the mapping knows: an option added later is refused (unless off) until mapped
MAPPED = {"kind", "vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout", "pos", "bias", "tie_weights",
          "rope_base", "activation", "qk_norm", "logit_softcap", "head_dim", "mlp_width"}


def inexpressible(cfg: ModelConfig) -> str | None:
    """The option of `cfg` that no standard transformers architecture computes, or None. Ones
    with a similar option compute something else: Persimmon's and StableLM's qk-norm is a
    LayerNorm, Qwen3's an RMSNorm beside SwiGLU and RMSNorm layers, Gemma 2's soft-cap sits
    beside GeGLU, RMSNorm and a norm after every layer."""
    if cfg.kind != "gpt":
        return "the bigram model (a table of next-token logits, no transformer)"
    if cfg.qk_norm:
        return "--qk-norm (per-head RMS norms of queries and keys)"
    if cfg.logit_softcap:
        return f"--logit-softcap {cfg.logit_softcap:g}"
    if cfg.attn_width != cfg.n_embd:  # both take a head's width to be n_embd / n_head
        return (f"{cfg.n_head} heads of {cfg.head_size} channels beside {cfg.n_embd} channels "
                "(a model whose heads gpt-prune removed)")
    return None


def check_expressible(cfg: ModelConfig) -> None:
    unmapped = [f.name for f in fields(cfg) if f.name not in MAPPED and getattr(cfg, f.name) != f.default]
    if unmapped:
        raise HFFolderError(f"--format hf does not map --{unmapped[0].replace('_', '-')} yet; export with "
                            "--format safetensors")
    why = inexpressible(cfg)
    if why is not None:
        raise HFFolderError(f"--format hf cannot express {why}: neither GPT-2 nor GPT-NeoX in transformers computes "
                            "it, and no other standard architecture does exactly; export with --format safetensors")


def hf_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights by transformers' names and layouts, fp32; a bias the model was
    built without is a zero bias, which computes exactly what no bias does."""
    cfg = model.config
    ours = {k: v.detach().to("cpu", torch.float32) for k, v in plain_state_dict(model).items()}
    tensors, used = {}, {"head.weight"} if cfg.tie_weights else set()
    for mine, theirs, layout in pairs(architecture(cfg), cfg):
        t = ours.get(mine)
        if t is None and mine.endswith(".bias"):
            t = torch.zeros(ours[mine.removesuffix(".bias") + ".weight"].shape[0])
        tensors[theirs] = to_theirs(t, layout, cfg.n_head).contiguous().clone()
        used.add(mine)
    left = sorted(set(ours) - used)
    if left:  # a weight the mapping does not know would be silently dropped
        raise HFFolderError(f"--format hf does not know where to put {', '.join(left[:3])} in a transformers model")
    return tensors


def hf_config(cfg: ModelConfig, eot_id: int, source: dict) -> dict:
    """config.json: the fields the installed transformers reads, and for GPT-NeoX the rotary
    fields of older versions (`rotary_pct`, `rotary_emb_base`) beside `rope_parameters`."""
    arch = architecture(cfg)
    common = {"architectures": [CLASS_NAME[arch]], "model_type": arch, "vocab_size": cfg.vocab_size,
              "tie_word_embeddings": cfg.tie_weights, "bos_token_id": eot_id, "eos_token_id": eot_id,
              "initializer_range": 0.02, "use_cache": True, "dtype": "float32"}
    if arch == GPT2:
        shape = {"n_positions": cfg.block_size, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
                 "n_inner": cfg.mlp_hidden, "activation_function": ACTIVATION_OUT[cfg.activation],
                 "layer_norm_epsilon": LAYER_NORM_EPS, "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout,
                 "attn_pdrop": cfg.dropout, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                 "reorder_and_upcast_attn": False, "add_cross_attention": False}
    else:
        shape = {"max_position_embeddings": cfg.block_size, "hidden_size": cfg.n_embd,
                 "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
                 "intermediate_size": cfg.mlp_hidden, "hidden_act": ACTIVATION_OUT[cfg.activation],
                 "layer_norm_eps": LAYER_NORM_EPS, "use_parallel_residual": False, "attention_bias": True,
                 "hidden_dropout": cfg.dropout, "attention_dropout": cfg.dropout,
                 "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base, "partial_rotary_factor": 1.0},
                 "rotary_pct": 1.0, "rotary_emb_base": cfg.rope_base, "rope_scaling": None}
    return {**common, **shape, MARK: {"format": HF_FORMAT, "version": HF_VERSION, "source": source}}


def tokenizer_config(tokenizer: Tokenizer, context: int) -> dict:
    """What AutoTokenizer reads beside tokenizer.json: the class (every transformers version
    has it), <|endoftext|> as the end of a sequence (and the start, as GPT-2 has it), the
    context, and no clean-up of spaces before punctuation, which would change decoded text."""
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT, "eos_token": EOT,
              "model_max_length": context, "clean_up_tokenization_spaces": False,
              "model_input_names": ["input_ids", "attention_mask"]}  # no token_type_ids, which NeoX's generate refuses
    if getattr(tokenizer, "unk_id", None) is not None:
        config["unk_token"] = UNK
    return config


def write_hf_folder(folder: Path, model: torch.nn.Module, tokenizer: Tokenizer, source: dict) -> None:
    """The five files of a Hugging Face folder, written into `folder` (a fresh folder of the
    caller's, moved into place whole once complete: plain writes suffice here)."""
    cfg = model.config
    check_expressible(cfg)
    blob = safetensors_module().save(hf_tensors(model), metadata={"format": "pt"})  # transformers refuses other formats
    eot = tokenizer.eot_id
    files = {
        CONFIG: hf_config(cfg, eot, source),
        GENERATION_CONFIG: {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot},
        TOKENIZER_CONFIG: tokenizer_config(tokenizer, cfg.block_size),
    }
    (folder / WEIGHTS).write_bytes(blob)
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content, indent=1) + "\n", encoding="utf-8")
    (folder / TOKENIZER).write_text(tokenizer.to_json(), encoding="utf-8")


# -- recognising ---------------------------------------------------------------------------------
def read_json(path: Path) -> dict | None:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def is_hf_folder(path: str | Path) -> bool:
    """Whether `path` is meant as a Hugging Face folder: its config.json names a model_type, or
    it has transformers' files but no config.json (then reading it says what is missing)."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / CONFIG).exists():
        return isinstance((read_json(path / CONFIG) or {}).get("model_type"), str)
    return any((path / name).exists() for name in (WEIGHTS, TOKENIZER_CONFIG, GENERATION_CONFIG, *OTHER_WEIGHTS))


def written_as_hf(path: str | Path) -> bool:
    """Whether `path` is a Hugging Face folder gpt-export wrote (what its --force may replace)."""
    mark = (read_json(Path(path) / CONFIG) or {}).get(MARK)
    return isinstance(mark, dict) and mark.get("format") == HF_FORMAT and (Path(path) / WEIGHTS).is_file()
