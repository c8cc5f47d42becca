"""Loading base models, fine-tuned models and PEFT adapters, and checking they fit together.

Everything goes through `transformers` / `peft` loaders (`from_pretrained` works for local
directories and hub ids alike); what this module adds is the checks that turn their many
failure modes into one clear `UserInputError`.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from forgetscope.errors import UserInputError, first_line
from forgetscope.sources import resolve_model

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    """`"float32"`, `"bfloat16"`, `"float16"` (or fp32/bf16/fp16) -> torch dtype."""
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise UserInputError(f"unknown dtype {name!r} (choose from float32, bfloat16, float16)") from None


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to `threads` for the block: a thread count can
    change how kernels split their sums, so fixing it keeps the numbers the same on every
    machine of one kind, whatever its default."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_device(name: str) -> torch.device:
    """`"auto"` picks CUDA, then MPS, then CPU; an explicit device must exist on this machine."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserInputError(f"unknown device {name!r} (use cpu, cuda, cuda:N, mps or auto)") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise UserInputError(f"device {name!r} is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserInputError(f"device {name!r} is not available on this machine")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserInputError(f"unsupported device {name!r} (use cpu, cuda, cuda:N, mps or auto)")
    return device


def check_location(name: str, what: str) -> None:
    """A name that looks like a path must exist; anything else is left to the hub loader."""
    looks_local = name.startswith((".", "/", "~")) or Path(name).exists() or name.count("/") > 1
    if looks_local and not Path(name).expanduser().is_dir():
        raise UserInputError(f"{what} not found: {name} (expected a model directory or a hub id)")


def load_tokenizer(name: str):
    """The tokenizer of a model directory, hub id, GGUF file or known source (`sources`)."""
    from transformers import AutoTokenizer

    name = resolve_model(name)
    check_location(name, "tokenizer")
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise UserInputError(f"cannot load a tokenizer from {name}: {(first_line(exc) or type(exc).__name__)}") from exc


def causal_lm_config(name: str, what: str = "model"):
    """The config of a causal (decoder-only) language model, from a directory, hub id, GGUF
    file or known source (`sources`); anything else is a `UserInputError`, before any weights
    are loaded. transformers would build an encoder such as BERT as a causal LM
    (`BertLMHeadModel`) with weights newly initialised, and numbers would follow."""
    from transformers import AutoConfig

    resolved = resolve_model(name)
    check_location(resolved, what)
    try:
        config = AutoConfig.from_pretrained(resolved)
    except (OSError, ValueError) as exc:
        raise UserInputError(f"cannot load a model config from {resolved}: {(first_line(exc) or type(exc).__name__)}") from exc
    architectures = getattr(config, "architectures", None) or []
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures) or getattr(config, "is_decoder", False)
    if getattr(config, "is_encoder_decoder", False) or (architectures and not causal):
        kind = architectures[0] if architectures else type(config).__name__
        raise UserInputError(f"{resolved} is not a causal language model (it is a {kind}); forgetscope needs a decoder-only LM")
    return config


def load_causal_lm(name: str, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                   device_map: str | dict | None = None):
    """A `transformers` causal LM in eval mode, its weights in `dtype`, from a directory, hub
    id, GGUF file or known source (`sources`), on `device`, or spread by `device_map`
    (accelerate's `"auto"`, or a map of module names to devices) when one is given; a model
    of another kind, or a checkpoint that lacks some of the model's weights, is a
    `UserInputError`."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    config = causal_lm_config(name)
    name = resolve_model(name)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, device_map=device_map, output_loading_info=True)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise UserInputError(f"{name} is not a causal language model (its config is {type(config).__name__})") from exc
        raise UserInputError(f"cannot load {name}: {(first_line(exc) or type(exc).__name__)}") from exc
    except OSError as exc:  # a permission refused says so, not "no such file"
        reason = f"{exc.filename}: {exc.strerror}" if exc.strerror and exc.filename else (first_line(exc) or type(exc).__name__)
        raise UserInputError(f"cannot load {name}: {reason}") from exc
    except pickle.UnpicklingError:
        raise UserInputError(unsafe_pickle(name)) from None
    except SafetensorError as exc:
        raise UserInputError(f"cannot load {name}: its weights are not a readable safetensors file ({(first_line(exc) or type(exc).__name__)})") from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise UserInputError(f"{name} lacks {len(missing)} of the model's weights ({', '.join(missing[:2])}"
                             f"{', ...' if len(missing) > 2 else ''}), which would be newly initialised: not a complete causal LM")
    return (model if device_map is not None else model.to(device)).eval()


def unsafe_pickle(where: str) -> str:
    """The refusal of a `.bin` checkpoint whose pickle holds more than tensors."""
    files = sorted(p.name for p in Path(where).glob("*.bin")) if Path(where).is_dir() else []
    return (f"{Path(where) / files[0] if files else where} holds objects other than tensors, which could run code when "
            "unpickled: refused (load it only if you trust it, and save it as safetensors)")


def load_adapter(base_model, adapter: str):
    """Wrap `base_model` with the PEFT adapter in directory `adapter` (frozen, eval mode)."""
    from peft import PeftModel
    from safetensors import SafetensorError

    try:
        return PeftModel.from_pretrained(base_model, adapter).eval()
    except pickle.UnpicklingError:
        raise UserInputError(unsafe_pickle(adapter)) from None
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
        raise UserInputError(f"cannot apply adapter {adapter} to the base model: {(first_line(exc) or type(exc).__name__)}") from exc


def check_same_tokenizer(base_tok, ft_tok, base_model, ft_model) -> None:
    """Forgetting compares distributions token by token: both sides need one vocabulary."""
    if base_tok.get_vocab() != ft_tok.get_vocab():
        raise UserInputError("base and fine-tuned tokenizers differ: the forgetting metric needs one shared vocabulary")
    base_size = base_model.get_output_embeddings().weight.shape[0]
    ft_size = ft_model.get_output_embeddings().weight.shape[0]
    if base_size != ft_size:
        raise UserInputError(f"base and fine-tuned output vocabularies differ in size ({base_size} vs {ft_size})")


def check_tokenizer_fits(tokenizer, model_config, name: str) -> None:
    """A tokenizer given separately from its model must be the model's own: every id within
    the model's vocabulary, the same end-of-text token, and text that survives a round trip.
    Another model's tokenizer runs to the end and reports nonsense."""
    vocab = getattr(model_config, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise UserInputError(f"tokenizer {name} does not fit the base model: it has {len(tokenizer)} tokens, the model's vocabulary {vocab}")
    model_eos = getattr(model_config, "eos_token_id", None)
    model_eos = set(model_eos) if isinstance(model_eos, list) else {model_eos}
    if tokenizer.eos_token_id is not None and None not in model_eos and tokenizer.eos_token_id not in model_eos:
        raise UserInputError(f"tokenizer {name} does not fit the base model: its end-of-text token is id "
                             f"{tokenizer.eos_token_id}, the model's {sorted(model_eos)}")
    sample = "In the beginning, 3 Functions returned: {'x': [1, 2]}"
    decoded = tokenizer.decode(tokenizer(sample, add_special_tokens=False)["input_ids"])
    if decoded.strip() != sample:
        raise UserInputError(f"tokenizer {name} does not fit the base model: it does not give text back as it was "
                             f"({sample!r} came back as {decoded.strip()!r})")


def context_length(model) -> int | None:
    """The most positions a model (or its config) says it can attend to, if it says."""
    config = getattr(model, "config", model)
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def check_seq_len(model, seq_len: int) -> None:
    """A sequence longer than the model's context is a user error, before any work is done."""
    limit = context_length(model)
    if limit is not None and seq_len > limit:
        raise UserInputError(f"--seq-len {seq_len} exceeds the model's context of {limit} positions")


@dataclass
class ModelPair:
    """What `measure` compares: `finetuned`, and its base as a separate model (`base`) or, for
    a PEFT adapter, as the same weights with the adapter switched off (`base` is None)."""

    finetuned: torch.nn.Module
    base: torch.nn.Module | None
    tokenizer: object

    @contextlib.contextmanager
    def as_base(self) -> Iterator[torch.nn.Module]:
        """The base model to run: the separate one, or the fine-tuned model with its adapters off."""
        if self.base is not None:
            yield self.base
        else:
            with self.finetuned.disable_adapter():
                yield self.finetuned


def load_pair(
    base: str,
    finetuned: str | None = None,
    adapter: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
) -> ModelPair:
    """Load a base model and a fine-tune of it: full weights (`finetuned`) or a PEFT `adapter`."""
    if (finetuned is None) == (adapter is None):
        raise UserInputError("give exactly one of --finetuned (a full model) or --adapter (a PEFT adapter)")
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise UserInputError(f"adapter not found: {adapter} (expected a directory with adapter_config.json)")
    torch_dtype, torch_device = resolve_dtype(dtype), resolve_device(device)
    base_model = load_causal_lm(base, torch_dtype, torch_device)
    tokenizer = load_tokenizer(base)
    if adapter is not None:
        return ModelPair(finetuned=load_adapter(base_model, adapter), base=None, tokenizer=tokenizer)
    ft_model = load_causal_lm(finetuned, torch_dtype, torch_device)
    ft_tokenizer = load_tokenizer(finetuned)
    check_same_tokenizer(tokenizer, ft_tokenizer, base_model, ft_model)
    return ModelPair(finetuned=ft_model, base=base_model, tokenizer=tokenizer)




def count_trainable_params(model: torch.nn.Module) -> int:
    """Parameters being trained, not counting input or output embeddings (the law's `P`)."""
    embedding_ids = set()
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        if module is not None:
            embedding_ids.update(id(p) for p in module.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in embedding_ids)
