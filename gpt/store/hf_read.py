"""Reading a Hugging Face folder back as this toolkit's model: its config.json checked to be
what our model computes exactly (GPT-2 or GPT-NeoX, with the options `hf_folder` writes),
its weights renamed and reshaped to ours, its tokenizer read as ours. The layout and the
correspondence of names live in `hf_folder`; this is the way back (--init-from, --ckpt,
--vocab-from)."""
from __future__ import annotations

from pathlib import Path

import torch

from data_prep import DataError, Tokenizer, tokenizer_from_json
from plumbing.errors import check_version, display_name, first_line

from ..config import ConfigError, ModelConfig
from ..model import build_model
from .checkpoint import all_finite, plain_state_dict
from .export_folder import read_tensors
from .hf_folder import (
    ACTIVATION_IN,
    BLOCKS,
    BUFFERS,
    CONFIG,
    GPT2,
    HEAD,
    HF_VERSION,
    LAYER_NORM_EPS,
    MARK,
    NEOX,
    OTHER_WEIGHTS,
    PREFIX,
    TOKENIZER,
    TRANSPOSED,
    WEIGHTS,
    HFFolderError,
    architecture,
    pairs,
    read_json,
    to_ours,
)


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
        inner = get("n_inner", int) if config.get("n_inner") is not None else 4 * C
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
        inner = get("intermediate_size", int)
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
    # an MLP of another width than 4 x n_embd (gpt-prune's, or a model made so) is mlp_width
    cfg = ModelConfig(kind="gpt", vocab_size=get("vocab_size", int), n_embd=C, bias=True, dropout=float(dropout),
                      activation=ACTIVATION_IN[act], mlp_width=0 if inner == 4 * C else inner, **shape)
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
