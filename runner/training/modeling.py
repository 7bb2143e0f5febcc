"""Load the base model and tokenizer, ready for the method a run asks for.

Methods (``[method].name``):

* ``full``: every weight trains. Weights load in fp32 (mixed precision comes from the Trainer's
  bf16/fp16 flags); ``bf16-pure`` loads them in bf16 and trains without fp32 master weights.
* ``freeze``: only the last ``trainable_layers`` transformer blocks, the final norm and the head
  train. The block list is found generically (the longest list of identical modules), so
  Llama-likes, GPT-2, GPT-NeoX, Falcon, OPT and BERT all work without a table of names.
* ``lora``: a peft LoRA adapter on a frozen base (held in the compute dtype to save memory).
* ``qlora``: a 4-bit NF4 (or FP4) base through bitsandbytes, double quantization optional, then
  `prepare_quantized_base` (peft's ``prepare_model_for_kbit_training`` without its fp32
  upcast of the frozen embeddings, head and norms) and LoRA.
* ``lora8``: an 8-bit base (LLM.int8) and LoRA.

Classification runs load ``AutoModelForSequenceClassification`` with the data's labels; its
head trains in every method (peft's ``modules_to_save`` for the LoRA family).

Nothing is downloaded when ``HF_HUB_OFFLINE`` is set: a hub id is read from the local cache.
Remote code runs only when ``[model].trust_remote_code`` is true.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from affiner.planner.errors import AffinerError
from affiner.planner.hub import hub_offline
from affiner.planner.vocabulary import BASE_WEIGHT_METHODS, LORA_METHODS, resolve_auto_precision
from affiner.runner.config import RunConfig
from affiner.runner.training.kbit import (
    disable_cpu_inference_repack,
    prepare_quantized_base,
    quantized_layer_count,
    quiet_int8_cast_warning,
)

#: Names classification heads go by in transformers' model classes.
HEAD_NAMES = ("score", "classifier", "pre_classifier", "lm_head")


@dataclass
class Precision:
    """How numbers are held and computed.

    Attributes:
        name: ``fp32``, ``bf16``, ``fp16`` or ``bf16-pure`` after resolving ``auto``.
        bf16, fp16: the Trainer's mixed-precision flags.
        compute_dtype: the dtype a frozen base (and 4-bit matmuls) compute in.
        note: why a requested precision was changed (empty when it was not).
    """

    name: str
    bf16: bool
    fp16: bool
    compute_dtype: torch.dtype
    note: str = ""


@dataclass
class LoadedModel:
    """The model ready for the Trainer, with what the rest of the recipe needs to know."""

    model: nn.Module
    tokenizer: Any
    device: str
    precision: Precision
    trainable_params: int
    total_params: int
    quantized: bool


def resolve_device(requested: str, on_note: Callable[[str], None] | None = None) -> str:
    """``auto`` becomes ``cuda`` when torch sees a GPU, else ``cpu``.

    A single-process run on a machine with several visible GPUs is first pinned to one of
    them (`pin_one_gpu`); this must happen before anything initialises CUDA (this function's
    own ``torch.cuda.is_available()``, or asking torch for a GPU's name), so a worker calls it
    first. What pinning did is passed to `on_note` (default: a RuntimeWarning).
    """
    if requested in ("auto", "cuda"):
        note = pin_one_gpu()
        if note and on_note is not None:
            on_note(note)
        elif note:
            warnings.warn(note, RuntimeWarning, stacklevel=2)
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise AffinerError(
            "[training].device is 'cuda' but torch sees no CUDA GPU.",
            hint='Set device = "auto" or "cpu", or install a CUDA build of torch.',
            where="[training].device",
        )
    return requested


def pin_one_gpu() -> str | None:
    """Make a single-process run see one GPU; returns a note saying so (None: nothing done).

    Without a launcher (torchrun, ``accelerate launch``) the Trainer counts every visible GPU
    and, with more than one, wraps the model in ``nn.DataParallel`` and multiplies the batch
    by the GPU count (transformers ``training_args.py``: ``train_batch_size =
    per_device_train_batch_size * max(1, n_gpu)``). A quantized model is not wrapped but its
    batch is multiplied all the same, on one GPU. Neither is what the plan measured, so the
    run keeps to the first visible GPU by narrowing ``CUDA_VISIBLE_DEVICES`` to it (in CUDA's
    own order, so it is the GPU the run would have called ``cuda:0``).

    ``torch.cuda.device_count()`` counts through NVML and honours the variable until CUDA is
    initialised; once it is, the count is cached and nothing can be changed here.
    """
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return None
    cuda = torch.cuda
    count = cuda.device_count()
    if count <= 1:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    first = visible.split(",")[0].strip() if visible else "0"
    if not cuda.is_initialized():
        os.environ["CUDA_VISIBLE_DEVICES"] = first
    if cuda.is_initialized() or cuda.device_count() != 1:
        return (
            f"{count} GPUs are visible to a single-process run and CUDA_VISIBLE_DEVICES could "
            "not narrow them (CUDA was already started): the Trainer will use DataParallel. "
            f"Set CUDA_VISIBLE_DEVICES={first} before starting, or launch with torchrun."
        )
    return (
        f"{count} GPUs are visible; this single-process run trains on GPU {first} only "
        f"(CUDA_VISIBLE_DEVICES={first}). Use torchrun or accelerate launch to train on several."
    )


def resolve_precision(requested: str, device: str) -> Precision:
    """Turn ``[training].precision`` into Trainer flags and a compute dtype for this device.

    ``auto`` is `affiner.planner.vocabulary.resolve_auto_precision` asked with what torch
    reports: bf16 where the GPU supports it natively, fp16 on older GPUs, fp32 on the CPU. fp16
    mixed precision on the CPU is not offered by torch's CPU autocast path the Trainer uses, so
    it falls back to fp32 with a note.
    """
    on_gpu = device == "cuda"
    # Without including_emulation=False torch answers True on Turing/Volta (it only checks
    # that a bf16 tensor can be created), and "auto" would pick slow, emulated bf16 there.
    bf16_ok = torch.cuda.is_bf16_supported(including_emulation=False) if on_gpu else True
    requested = resolve_auto_precision(requested, gpu=on_gpu, bf16=bf16_ok)
    if requested in ("bf16", "bf16-pure") and not bf16_ok:
        return Precision(
            "fp16",
            False,
            True,
            torch.float16,
            note="this GPU has no bf16; using fp16 mixed precision",
        )
    if requested == "fp16" and not on_gpu:
        return Precision("fp32", False, False, torch.float32, note="fp16 needs a GPU; using fp32")
    if requested == "bf16":
        return Precision("bf16", True, False, torch.bfloat16)
    if requested == "bf16-pure":
        return Precision("bf16-pure", False, False, torch.bfloat16)
    if requested == "fp16":
        return Precision("fp16", False, True, torch.float16)
    return Precision("fp32", False, False, torch.float32)


def _hub_kwargs(cfg: RunConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": bool(cfg.model.trust_remote_code)}
    if cfg.model.revision:
        kwargs["revision"] = cfg.model.revision
    return kwargs


def _not_found(cfg: RunConfig, exc: Exception) -> AffinerError:
    ref = cfg.model.name_or_path
    if ref.startswith(("/", ".", "~")) and not os.path.isdir(os.path.expanduser(ref)):
        return AffinerError(
            f"Model folder {ref!r} does not exist.",
            hint="Check the path; it should hold config.json, the weights and the tokenizer.",
            where="[model].name_or_path",
        )
    offline = hub_offline()
    hint = "Give a local folder with config.json and weights, or a hub id already in the cache" + (
        " (HF_HUB_OFFLINE is set, so nothing is downloaded)." if offline else "."
    )
    return AffinerError(
        f"Cannot load model {ref!r}: {exc}", hint=hint, where="[model].name_or_path"
    )


def load_tokenizer(cfg: RunConfig) -> Any:
    """The run's tokenizer, with a pad token (the EOS token, or UNK) when it has none."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.model.name_or_path, **_hub_kwargs(cfg))
    except (OSError, ValueError) as exc:
        raise _not_found(cfg, exc) from exc
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise AffinerError(
                f"The tokenizer of {cfg.model.name_or_path!r} has no pad, EOS or UNK token.",
                hint="Add a pad token to the tokenizer (tokenizer_config.json) and try again.",
                where="[model].name_or_path",
            )
        tokenizer.pad_token = fallback
    return tokenizer


def quantization_config(cfg: RunConfig, precision: Precision) -> Any | None:
    """A BitsAndBytesConfig for ``qlora``/``lora8`` (or any explicit quantization), else None."""
    quant = cfg.quantization
    if quant == "none":
        return None
    from transformers import BitsAndBytesConfig

    skip = list(HEAD_NAMES) if cfg.model.task == "classification" else None
    if quant == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant,  # "nf4" or "fp4"
        bnb_4bit_use_double_quant=bool(cfg.method.double_quant),
        bnb_4bit_compute_dtype=precision.compute_dtype,
        llm_int8_skip_modules=skip,
    )


def load_dtype(cfg: RunConfig, precision: Precision) -> torch.dtype:
    """The dtype weights load in: fp32 master weights where they train, compute dtype otherwise."""
    if precision.name == "bf16-pure":
        return torch.bfloat16
    if cfg.method.name in BASE_WEIGHT_METHODS:
        return torch.float32
    return precision.compute_dtype


def load_model(
    cfg: RunConfig,
    tokenizer: Any,
    *,
    device: str,
    precision: Precision,
    labels: list[str] | None = None,
    apply_method: bool = True,
) -> LoadedModel:
    """Load the base model and apply the run's method.

    Args:
        cfg: the run configuration.
        tokenizer: from `load_tokenizer` (its pad token is copied into the model config).
        device: ``cpu`` or ``cuda`` (from `resolve_device`).
        precision: from `resolve_precision`.
        labels: class names in id order, for classification.
        apply_method: False loads the plain, unquantized base in the compute dtype (to merge
            a trained adapter into).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    classification = cfg.model.task == "classification"
    qconfig = quantization_config(cfg, precision) if apply_method else None
    kwargs: dict[str, Any] = {
        **_hub_kwargs(cfg),
        "dtype": load_dtype(cfg, precision) if apply_method else precision.compute_dtype,
        "attn_implementation": cfg.model.attn_implementation,
    }
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        # Quantized weights are placed at load time; the Trainer cannot move them afterwards.
        kwargs["device_map"] = (
            {"": int(os.environ.get("LOCAL_RANK", "0"))} if device == "cuda" else "cpu"
        )
    if classification:
        if not labels:
            raise AffinerError(
                "A classification run needs labels, and none were found in the data.",
                hint="List them in [data].labels or give each row a label column.",
                where="[data].labels",
            )
        kwargs.update(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
        )
    check_attention(cfg.model.attn_implementation, device)
    if qconfig is not None and cfg.quantization == "int8" and device == "cuda":
        quiet_int8_cast_warning()
    auto_class = AutoModelForSequenceClassification if classification else AutoModelForCausalLM
    try:
        model = auto_class.from_pretrained(cfg.model.name_or_path, **kwargs)
    except (OSError, ValueError, ImportError) as exc:
        attention = _attention_error(cfg, exc)
        if attention is not None:
            raise attention from exc
        if isinstance(exc, ImportError):
            raise
        raise _not_found(cfg, exc) from exc
    if qconfig is not None and quantized_layer_count(model) == 0:
        raise AffinerError(
            f"bitsandbytes quantized none of {type(model).__name__}'s layers (its linear layers "
            f"are of a kind it does not replace): a {cfg.method.name} run would train an "
            "unquantized base, with far more memory than planned",
            hint='Use method = "lora" for this model (a bf16 base with LoRA adapters).',
            where="[method].name",
        )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id

    method = cfg.method.name if apply_method else "none"
    if method == "freeze":
        freeze_all_but_last(model, cfg.method.trainable_layers)
    elif method in LORA_METHODS:
        model = apply_lora(model, cfg, quantized=qconfig is not None)
        if precision.bf16 or precision.fp16:
            upcast_trainable(model)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return LoadedModel(model, tokenizer, device, precision, trainable, total, qconfig is not None)


def apply_lora(model: nn.Module, cfg: RunConfig, *, quantized: bool) -> nn.Module:
    """Wrap the model in a peft LoRA adapter (after k-bit preparation for a quantized base)."""
    from peft import LoraConfig, get_peft_model

    if quantized:
        model = prepare_quantized_base(
            model, gradient_checkpointing=bool(cfg.training.gradient_checkpointing)
        )
        disable_cpu_inference_repack(model)
    classification = cfg.model.task == "classification"
    targets = cfg.method.target_modules
    lora = LoraConfig(
        r=cfg.method.lora_rank,
        lora_alpha=cfg.method.lora_alpha,
        lora_dropout=cfg.method.lora_dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
        task_type="SEQ_CLS" if classification else "CAUSAL_LM",
        modules_to_save=head_module_names(model) if classification else None,
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        if "lora_dropout" in str(exc):
            from affiner.runner.config import MOE_DROPOUT, MOE_DROPOUT_HINT

            raise AffinerError(
                f"LoRA could not be applied: {MOE_DROPOUT}",
                hint=MOE_DROPOUT_HINT,
                where="[method].lora_dropout",
            ) from exc
        raise AffinerError(
            f"LoRA could not be applied: {exc}",
            hint='Use target_modules = "all-linear" or names of linear layers in this model.',
            where="[method].target_modules",
        ) from exc


def upcast_trainable(model: nn.Module) -> int:
    """Hold every trainable fp16/bf16 parameter in fp32 (mixed precision wants fp32 masters).

    peft upcasts the LoRA matrices itself, but not the copy of a classification head it makes
    for ``modules_to_save``: with a base loaded in fp16 that copy trains in fp16 and the fp16
    grad scaler refuses it ("Attempting to unscale FP16 gradients."); in bf16 its updates
    round away. Returns how many parameters were cast.
    """
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()
            cast += 1
    return cast


def check_attention(name: str, device: str) -> None:
    """Refuse an attention implementation this machine cannot run, before loading weights.

    transformers raises a bare ImportError for ``flash_attention_2`` without the ``flash_attn``
    package (or tries a Hub kernel through ``kernels``, which needs the network).
    """
    if not name.startswith("flash_attention"):
        return
    if device != "cuda":
        raise AffinerError(
            f"attn_implementation {name!r} needs an NVIDIA GPU; this run is on the {device}.",
            hint='Use attn_implementation = "sdpa".',
            where="[model].attn_implementation",
        )
    package = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}
    module = package.get(name, "flash_attn")
    hub_kernels = importlib.util.find_spec("kernels") is not None and not hub_offline()
    if importlib.util.find_spec(module) is None and not hub_kernels:
        raise AffinerError(
            f"attn_implementation {name!r} needs the {module} package, which is not installed.",
            hint='Use attn_implementation = "sdpa" (PyTorch\'s fused attention), or install '
            "flash-attn built for this torch and CUDA.",
            where="[model].attn_implementation",
        )


def _attention_error(cfg: RunConfig, exc: Exception) -> AffinerError | None:
    """An AffinerError naming [model].attn_implementation when `exc` is about attention."""
    text = str(exc)
    if (
        "attn_implementation" not in text
        and "Flash" not in text
        and "scaled_dot_product" not in text
    ):
        return None
    return AffinerError(
        f"The model cannot use attn_implementation {cfg.model.attn_implementation!r}: "
        f"{text.splitlines()[0] if text else type(exc).__name__}",
        hint='Use attn_implementation = "sdpa", or "eager" for a model without SDPA support.',
        where="[model].attn_implementation",
    )


def head_module_names(model: nn.Module) -> list[str]:
    """The classification head's module names present in this model (``score``, ``classifier``)."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    return [name for name in HEAD_NAMES[:3] if name in names]


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The transformer's block list: the longest `nn.ModuleList` whose items share one class.

    Works across architectures without a table of attribute names (``model.layers``,
    ``transformer.h``, ``gpt_neox.layers``, ``model.decoder.layers``, ``encoder.layer``).
    """
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            kinds = {type(child) for child in module}
            if len(kinds) == 1 and (best is None or len(module) > len(best[1])):
                best = (name, module)
    if best is None:
        raise AffinerError(
            f"Cannot find the transformer blocks of {type(model).__name__} to freeze.",
            hint='Use method "lora" or "full" for this model.',
            where="[method].name",
        )
    return best


def freeze_all_but_last(model: nn.Module, trainable_layers: int) -> list[str]:
    """Freeze everything except the last `trainable_layers` blocks, the final norm and the head.

    Parameters outside the blocks that are not embeddings (the final norm, a pooler, the
    classification or LM head) stay trainable; input embeddings are frozen unless the head is
    tied to them. Returns the names of the parameters left trainable.
    """
    block_name, blocks = find_blocks(model)
    if trainable_layers < 1 or trainable_layers > len(blocks):
        raise AffinerError(
            f"trainable_layers must be between 1 and {len(blocks)} for this model (it has "
            f"{len(blocks)} blocks); got {trainable_layers}.",
            where="[method].trainable_layers",
        )
    keep_blocks = {f"{block_name}.{i}." for i in range(len(blocks) - trainable_layers, len(blocks))}
    embedding_prefixes = [
        f"{name}." for name, module in model.named_modules() if isinstance(module, nn.Embedding)
    ]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_params = {id(p) for p in head.parameters()} if head is not None else set()
    trainable = []
    for name, param in model.named_parameters():
        in_blocks = name.startswith(f"{block_name}.")
        if in_blocks:
            train = any(name.startswith(prefix) for prefix in keep_blocks)
        else:
            is_embedding = any(name.startswith(prefix) for prefix in embedding_prefixes)
            train = not is_embedding or id(param) in head_params
        param.requires_grad_(train)
        if train:
            trainable.append(name)
    return trainable
