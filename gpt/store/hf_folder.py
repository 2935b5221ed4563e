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

from data_prep import DataError, Tokenizer, tokenizer_from_json
from plumbing.errors import check_version, display_name, first_line

from ..config import ConfigError, ModelConfig
from ..model import build_model
from .checkpoint import all_finite, plain_state_dict
from .export_folder import ExportError, read_tensors, safetensors_module

HF_FORMAT = "chargpt-hf"
HF_VERSION = 1
MARK = "chargpt"  # config.json's key for what only this toolkit reads: the format and where the export came from
CONFIG, GENERATION_CONFIG, WEIGHTS = "config.json", "generation_config.json", "model.safetensors"
TOKENIZER, TOKENIZER_CONFIG = "tokenizer.json", "tokenizer_config.json"
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
          "rope_base", "activation", "qk_norm", "logit_softcap"}


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
                 "n_inner": 4 * cfg.n_embd, "activation_function": ACTIVATION_OUT[cfg.activation],
                 "layer_norm_epsilon": LAYER_NORM_EPS, "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout,
                 "attn_pdrop": cfg.dropout, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                 "reorder_and_upcast_attn": False, "add_cross_attention": False}
    else:
        shape = {"max_position_embeddings": cfg.block_size, "hidden_size": cfg.n_embd,
                 "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
                 "intermediate_size": 4 * cfg.n_embd, "hidden_act": ACTIVATION_OUT[cfg.activation],
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


# -- reading -------------------------------------------------------------------------------------
def read_hf_folder(folder: str | Path) -> dict:
    """A Hugging Face folder as the state a checkpoint holds: `model_config`, `model` (our
    names, fp32), `tokenizer` (its JSON) and, for a folder gpt-export wrote, the `step` and
    `val_loss` of its source. Anything it cannot represent exactly is one HFFolderError."""
    folder = Path(folder)
    where = display_name(folder)
    if not (folder / CONFIG).is_file():
        raise HFFolderError(f"{where} has no {CONFIG}, which says what model its weights are (save it with "
                            "save_pretrained, which writes it)")
    config = read_json(folder / CONFIG)
    if config is None:
        raise HFFolderError(f"{where}: {CONFIG} is not a readable JSON object")
    mark = config.get(MARK)
    if isinstance(mark, dict):
        check_version(mark.get("version"), HF_VERSION, f"{where}/{CONFIG}", HFFolderError)
    cfg = model_config(config, where)
    tokenizer = read_tokenizer(folder, cfg, where)
    state = read_weights(folder, config, cfg, where)
    source = mark.get("source") if isinstance(mark, dict) and isinstance(mark.get("source"), dict) else {}
    return {"model_config": cfg.to_dict(), "model": state, "tokenizer": tokenizer.to_json(),
            "step": source.get("step"), "val_loss": source.get("val_loss"), "source": source}


def model_config(config: dict, where: str) -> ModelConfig:
    """Our model's shape from a transformers config.json, refused where ours would compute
    something else."""
    arch = config.get("model_type")
    if arch not in (GPT2, NEOX):
        raise HFFolderError(f"{where}: model_type {arch!r} is not one this toolkit's model computes "
                            f"(it reads {GPT2}, for learned positions, and {NEOX}, for rotary ones)")

    def get(name, kind, default=None):
        value = config.get(name, default)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise HFFolderError(f"{where}: {CONFIG} has no valid {name} ({value!r})")
        return value

    def refuse(what: str) -> None:
        raise HFFolderError(f"{where}: {what}, which this toolkit's model does not compute; it reads {arch} models "
                            "exactly as gpt-export --format hf writes them")

    C = get("n_embd" if arch == GPT2 else "hidden_size", int)
    eps = get("layer_norm_epsilon" if arch == GPT2 else "layer_norm_eps", (int, float), LAYER_NORM_EPS)
    if eps != LAYER_NORM_EPS:
        refuse(f"its layer norms have epsilon {eps:g}, not {LAYER_NORM_EPS:g}")
    act_name = "activation_function" if arch == GPT2 else "hidden_act"
    act = config.get(act_name, "gelu_new" if arch == GPT2 else "gelu")
    if not isinstance(act, str) or act not in ACTIVATION_IN:
        refuse(f"its activation is {act!r} (not one of {', '.join(ACTIVATION_IN)})")
    if arch == GPT2:
        inner = config.get("n_inner")
        if inner not in (None, 4 * C):
            refuse(f"its MLP is {inner} wide, not 4 x n_embd = {4 * C}")
        if not config.get("scale_attn_weights", True) or config.get("scale_attn_by_inverse_layer_idx"):
            refuse("its attention scores are scaled other than by 1/sqrt(head size) "
                   "(scale_attn_weights false or scale_attn_by_inverse_layer_idx true)")
        if config.get("add_cross_attention"):
            refuse("it has cross-attention")
        shape = dict(block_size=get("n_positions", int), n_layer=get("n_layer", int), n_head=get("n_head", int),
                     pos="learned", tie_weights=get("tie_word_embeddings", bool, True))
        dropout = config.get("resid_pdrop", 0.0)
    else:
        if config.get("use_parallel_residual", True):  # transformers' default for NeoX
            refuse("it adds attention and MLP in parallel (use_parallel_residual true)")
        if get("intermediate_size", int) != 4 * C:
            refuse(f"its MLP is {config['intermediate_size']} wide, not 4 x hidden_size = {4 * C}")
        rope = config.get("rope_parameters") if isinstance(config.get("rope_parameters"), dict) else {}
        scaling = config.get("rope_scaling") or {}  # older versions' field for scaled rotary embeddings
        legacy = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else scaling
        kind = rope.get("rope_type", legacy)
        if kind not in (None, "default"):
            refuse(f"its rotary embeddings are scaled (rope type {kind!r})")
        partial = rope.get("partial_rotary_factor", config.get("rotary_pct", 0.25))  # 0.25: transformers' default
        if partial != 1.0:
            refuse(f"it rotates {partial} of each head (partial rotary), not all of it")
        heads = get("num_attention_heads", int)
        if config.get("head_dim") not in (None, C // heads):
            refuse(f"its heads are {config['head_dim']} wide, not hidden_size / heads = {C // heads}")
        theta = rope.get("rope_theta", config.get("rotary_emb_base", config.get("rope_theta", 10000.0)))
        if not isinstance(theta, (int, float)) or isinstance(theta, bool):
            raise HFFolderError(f"{where}: {CONFIG} has no valid rope_theta ({theta!r})")
        shape = dict(block_size=get("max_position_embeddings", int), n_layer=get("num_hidden_layers", int),
                     n_head=heads, pos="rope", rope_base=float(theta),
                     tie_weights=get("tie_word_embeddings", bool, False))
        dropout = config.get("hidden_dropout", 0.0)
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        dropout = 0.0  # a training option, not part of what the model computes
    cfg = ModelConfig(kind="gpt", vocab_size=get("vocab_size", int), n_embd=C, bias=True, dropout=float(dropout),
                      activation=ACTIVATION_IN[act], **shape)
    try:
        cfg.validate()
    except ConfigError as e:
        raise HFFolderError(f"{where}: {CONFIG} describes no model this toolkit builds ({e})") from None
    return cfg


def read_tokenizer(folder: Path, cfg: ModelConfig, where: str) -> Tokenizer:
    try:
        text = (folder / TOKENIZER).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HFFolderError(f"{where} has no {TOKENIZER} (this toolkit reads a fast tokenizer's file; save the "
                            "tokenizer with a PreTrainedTokenizerFast)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise HFFolderError(f"{where}: {TOKENIZER} is unreadable ({first_line(e)})") from None
    try:
        tokenizer = tokenizer_from_json(text)
    except DataError as e:
        raise HFFolderError(f"{where}: its {TOKENIZER} cannot be represented by this toolkit's tokenizers "
                            f"({e})") from None
    if len(tokenizer) != cfg.vocab_size:
        raise HFFolderError(f"{where}: its tokenizer has {len(tokenizer)} tokens but {CONFIG} says vocab_size "
                            f"{cfg.vocab_size}; the model needs one row per token")
    return tokenizer


def read_weights(folder: Path, config: dict, cfg: ModelConfig, where: str) -> dict[str, torch.Tensor]:
    """model.safetensors by our names and layouts, checked against the model `cfg` describes."""
    if not (folder / WEIGHTS).is_file():
        other = next((name for name in OTHER_WEIGHTS if (folder / name).exists()), None)
        why = {OTHER_WEIGHTS[0]: "its weights are sharded; save with a max_shard_size above the model's size",
               OTHER_WEIGHTS[1]: "a pickle, which could run code when loaded; save with safe_serialization"}.get(other)
        raise HFFolderError(f"{where} has no {WEIGHTS}" + (f" ({other}: {why})" if other else ""))
    arch = architecture(cfg)
    found = normalised_names(read_tensors(folder / WEIGHTS), arch)
    if cfg.tie_weights:  # transformers ties the head to the embedding whatever the file holds
        found.pop(HEAD[arch], None)
    if arch == NEOX and not config.get("attention_bias", True):  # attention built without biases: zero ones are exact
        for i in range(cfg.n_layer):
            for name, size in (("query_key_value", 3 * cfg.n_embd), ("dense", cfg.n_embd)):
                found.setdefault(f"{BLOCKS[arch]}.{i}.attention.{name}.bias", torch.zeros(size))
    correspondence = pairs(arch, cfg)
    with torch.device("meta"):  # the shapes alone: no memory, no initialisation
        shapes = {k: tuple(v.shape) for k, v in plain_state_dict(build_model(cfg)).items()}
    expected = {theirs: shapes[mine][::-1] if layout == TRANSPOSED else shapes[mine]
                for mine, theirs, layout in correspondence}
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    wrong = [f"{k} is {tuple(found[k].shape)}, not {expected[k]}" for k in expected
             if k in found and tuple(found[k].shape) != expected[k]]
    wrong += [f"{k} is {v.dtype}" for k, v in found.items() if k in expected and not v.is_floating_point()]
    if missing or extra or wrong:
        parts = ([f"missing {', '.join(missing[:3])}"] if missing else []) + (
            [f"unexpected {', '.join(extra[:3])}"] if extra else [])
        raise HFFolderError(f"{where}: {WEIGHTS} does not match the model in {CONFIG} ({'; '.join(parts + wrong[:3])})")
    state = {mine: to_ours(found[theirs].float(), layout, cfg.n_head).contiguous()
             for mine, theirs, layout in correspondence}
    if cfg.tie_weights:
        state["head.weight"] = state["wte.weight"]
    if not all_finite(state):
        raise HFFolderError(f"{where} has weights that are not finite numbers ({WEIGHTS} is damaged)")
    return state


def normalised_names(tensors: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """The names transformers' own classes load: without the buffers older versions saved,
    with the base model's prefix (a base model saved alone has none), NeoX's head by one name."""
    tensors = {k: v for k, v in tensors.items() if not k.endswith(BUFFERS)}
    heads = {"lm_head.weight", "embed_out.weight"}
    if not any(k.startswith(PREFIX[arch]) for k in tensors):
        tensors = {k if k in heads else PREFIX[arch] + k: v for k, v in tensors.items()}
    if arch == NEOX and "lm_head.weight" in tensors:
        tensors[HEAD[NEOX]] = tensors.pop("lm_head.weight")
    return tensors
