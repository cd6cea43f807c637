"""Detect how a model is called (``ModelCall``) from what it states, its diffusers config, or its forward signature.

Order of evidence: a model's own ``timeaware_call()``; a diffusers model's config (cross-attention →
``encoder_hidden_states``, class embeddings / ``num_embeds_ada_norm`` → labels, a Fourier σ embedding →
a σ domain, 1-D models → (C, L)); otherwise ``forward``'s parameter names (``forward(t, x)`` of
torchdiffeq/torchdyn, ``forward(x, time)`` of lucidrains / ADM, ``forward(x, temb)`` of a block taking
a time embedding, ``forward(x)`` with torchdyn's ``DepthCat`` or t concatenated to x). Every part can
be overridden by the caller; a call that still fails says which argument the model wanted.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..calling import Input, ModelCall, holds_time, model_dtype, unwrapped
from ..embeddings import UNIT_INTERVAL, TimeDomain

TIME_NAMES = ("timestep", "timesteps", "t", "time", "times", "ts", "time_cond", "sigma", "sigmas", "noise_labels",
              "noise_level", "noise_levels", "c_noise", "noise_cond", "timestep_ratio")
SIGMA_NAMES = ("sigma", "sigmas", "noise_level", "noise_levels")
EMBEDDING_NAMES = ("temb", "emb", "time_emb", "t_emb", "time_embedding")
LABEL_NAMES = ("y", "class_labels", "labels", "classes", "label", "cond_labels")
LABEL_TABLE = re.compile(r"(^|[._])(label|class|y_emb)", re.IGNORECASE)  # label_emb, y_embedder, classes_emb
CONTEXT_NAMES = ("context", "encoder_hidden_states", "c_crossattn", "text_embeds", "text_embeddings", "cond_emb")
DIFFUSION_STEPS = TimeDomain("steps", 0, 999)
EDM_SIGMAS = TimeDomain("sigma", 0.002, 80.0)


def describe(model: nn.Module, **overrides: Any) -> ModelCall:
    """How to call ``model`` with (x, t); ``overrides`` replace detected fields (``ModelCall``'s names)."""
    model = unwrapped(model)
    stated = getattr(model, "timeaware_call", None)
    call = stated() if callable(stated) else _diffusers(model) or _from_signature(model)
    if overrides:
        call = call.replace(**{k: v for k, v in overrides.items() if v is not None})
    return _without_time_extra(call, [p.name for p in forward_parameters(model)])


def _without_time_extra(call: ModelCall, names: list[str]) -> ModelCall:
    """Drop a detected extra input that is the argument t goes into (``forward(x, y)`` of NCSN: y is the noise
    level, also a label name): one argument cannot carry both."""
    time_name = call.time_arg
    if time_name is None and call.convention == "xt" and len(names) > 1:
        time_name = names[1]
    if time_name is None or time_name not in call.inputs:
        return call
    return call.replace(extras=tuple((name, spec) for name, spec in call.extras if name != time_name))


def forward_parameters(model: nn.Module) -> list[inspect.Parameter]:
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return []
    return [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _from_signature(model: nn.Module) -> ModelCall:
    params = forward_parameters(model)
    names = [p.name for p in params]
    if names and names[0] in TIME_NAMES and len(names) >= 2:  # torchdiffeq / torchdyn / torchcfm wrappers
        return ModelCall(convention="tx", scalar_time=True, domain=UNIT_INTERVAL,  # an ODE solver passes 0-d t
                         input_shape=guess_input_shape(model), extras=_extras(model, names[2:]))
    time_arg = next((n for n in names[1:] if n in TIME_NAMES), None)
    if time_arg is not None:
        return ModelCall(convention="xt", time_arg=time_arg, domain=_domain_for(model, time_arg),
                         input_shape=guess_input_shape(model), extras=_extras(model, names))
    emb_arg = next((n for n in names[1:] if n in EMBEDDING_NAMES), None)
    if emb_arg is not None:
        return ModelCall(convention="embedding", embedding_dim=_embedding_dim(model), domain=DIFFUSION_STEPS,
                         input_shape=guess_input_shape(model))
    required = [p.name for p in params if p.default is inspect.Parameter.empty]
    if len(required) <= 1:
        if any(holds_time(m) for m in model.modules()):  # torchdyn: DepthCat reads its .t, set 0-d by DEFunc
            return ModelCall(convention="attr", scalar_time=True, domain=UNIT_INTERVAL,
                             input_shape=guess_input_shape(model))
        shape = guess_input_shape(model)
        dim = 1 if shape is not None and len(shape) > 1 else -1
        if shape is not None:  # t is one of the first layer's input features/channels
            shape = tuple(s - 1 if i == (0 if dim == 1 else len(shape) - 1) else s for i, s in enumerate(shape))
        return ModelCall(convention="concat", concat_dim=dim, domain=UNIT_INTERVAL, input_shape=shape or None)
    return ModelCall(convention="xt", domain=_domain_for(model, ""), input_shape=guess_input_shape(model),
                     extras=_extras(model, names))


INTEGER_REFUSED = re.compile(r"\bLong\b|Int64|int64")  # a model's dtype error on integer timesteps
STEP_COUNTS = ("num_timesteps", "num_train_timesteps", "diffusion_steps", "timesteps", "T")
FOURIER = re.compile(r"Fourier|RandomOrLearnedSinusoidal|LearnedSinusoidal")


def _domain_for(model: nn.Module, name: str) -> TimeDomain:
    """The domain of the argument t goes into: from its name (σ, EDM's c_noise), a step count the model keeps
    (``num_timesteps = 1000``: steps 0..999), the noise levels it keeps (score_sde's ``sigmas``: σ between them
    with Fourier features, else their indices), or Fourier features of t, which continuous-time models use
    (lucidrains' ``random_fourier_features``): [0, 1]. Otherwise diffusion steps 0..999."""
    if name in SIGMA_NAMES:
        return EDM_SIGMAS
    if name in ("noise_labels", "c_noise", "noise_cond"):  # EDM's c_noise = ln(σ)/4 for σ in [0.002, 80]
        return TimeDomain("continuous", -1.55, 1.1)
    if name == "timestep_ratio":  # Würstchen / StableCascade: t / T
        return UNIT_INTERVAL
    steps = next((v for k in STEP_COUNTS if isinstance(v := getattr(model, k, None), int) and not isinstance(v, bool)
                  and 2 <= v <= 10**9), None)
    if steps is not None:
        return TimeDomain("steps", 0, steps - 1)
    fourier = getattr(model, "random_or_learned_sinusoidal_cond", False) is True or any(
        FOURIER.search(type(m).__name__) for m in model.modules())
    sigmas = getattr(model, "sigmas", None)  # score_sde keeps its noise levels: σ with Fourier features, else indices
    if (isinstance(sigmas, torch.Tensor) and sigmas.ndim == 1 and sigmas.numel() >= 2 and sigmas.is_floating_point()
            and bool(torch.isfinite(sigmas).all() and (sigmas > 0).all()) and sigmas.min() < sigmas.max()):
        if fourier:
            return TimeDomain("sigma", float(sigmas.min()), float(sigmas.max()))
        return TimeDomain("steps", 0, sigmas.numel() - 1)
    return UNIT_INTERVAL if fourier else DIFFUSION_STEPS


def _extras(model: nn.Module, names: list[str]) -> tuple[tuple[str, Input], ...]:
    """The inputs besides x and t a model's forward names: class labels and a cross-attention context."""
    extras: list[tuple[str, Input]] = []
    label = next((n for n in names if n in LABEL_NAMES), None)
    classes = _count(getattr(model, "num_classes", None)) or _label_table(model)
    vector = _count(getattr(model, "label_dim", None))  # EDM's and EDM2's Precond: one-hot rows of label_dim
    vector = vector or _label_width(model)
    if label is not None and classes:
        extras.append((label, Input(kind="labels", high=classes)))
    elif label is not None and vector:
        extras.append((label, Input(shape=(vector,))))
    elif label is not None and any(p.name == label and p.default is inspect.Parameter.empty
                                   for p in forward_parameters(model)):  # EDM's, EDM2's nets: None, unconditional
        extras.append((label, Input(kind="none")))
    context = next((n for n in names if n in CONTEXT_NAMES), None)
    width = _count(getattr(model, "context_dim", None)) or _count(getattr(model, "cross_attention_dim", None))
    if context is not None and (width := width or _context_width(model)):
        extras.append((context, Input(shape=(8, width))))  # 8 tokens of text embedding
    return tuple(extras)


LABEL_LAYER = re.compile(r"(^|[._])(map_label|emb_label|label_emb)$")


def _label_width(model: nn.Module) -> int | None:
    """The width of the label vectors a model projects (EDM's ``map_label`` Linear, EDM2's ``emb_label``: weight
    (out, label_dim)); None without such a layer or for an embedding table (integer labels)."""
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if (LABEL_LAYER.search(name) and not isinstance(module, nn.Embedding) and isinstance(weight, torch.Tensor)
                and weight.ndim == 2):
            return int(weight.shape[1])
    return None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


def _label_table(model: nn.Module) -> int | None:
    """Rows of the class embedding table (DiT's ``y_embedder.embedding_table``, ADM's ``label_emb``)."""
    return next((m.num_embeddings for name, m in model.named_modules()
                 if isinstance(m, nn.Embedding) and LABEL_TABLE.search(name)), None)


def _context_width(model: nn.Module) -> int | None:
    """The context width a cross-attention reads: the input of its key projection where it differs from the
    query's (LDM's ``CrossAttention``, diffusers' ``Attention``: ``to_k`` over context, ``to_q`` over x)."""
    for module in model.modules():
        key, query = getattr(module, "to_k", None), getattr(module, "to_q", None)
        if isinstance(key, nn.Linear) and isinstance(query, nn.Linear) and key.in_features != query.in_features:
            return key.in_features
    return None


def _embedding_dim(model: nn.Module) -> int:
    """The width of the time embedding a block reads: the input of its first Linear on the embedding path."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and ("emb" in name or "time" in name):
            return module.in_features
    linear = next((m for m in model.modules() if isinstance(m, nn.Linear)), None)
    if linear is None:
        raise ValueError(f"{type(model).__name__} takes a time embedding but has no Linear layer to tell its width; "
                         "give the call explicitly")
    return linear.in_features


SPATIAL = {1: (64,), 2: (32, 32), 3: (8, 16, 16)}


def guess_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """One input's shape from the model's first layer that says its width: a channel norm or a conv-like layer
    (any module whose weight is a 3-D to 5-D kernel): (C, 32, 32), (C, 64) …; else the first Linear's (F,).
    A guess (``probe`` also tries C - 1, for a t channel concatenated inside); ``--input-shape`` overrides it."""
    shape = getattr(model, "input_shape", None)
    if shape is not None:
        return tuple(shape)
    linear: tuple[int, ...] | None = None
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, (nn.GroupNorm, nn.modules.batchnorm._BatchNorm)) and isinstance(weight, torch.Tensor):
            kernels = [int(w.ndim) for m in model.modules() if isinstance(w := getattr(m, "weight", None), torch.Tensor)
                       and w.ndim >= 3]
            return (int(weight.shape[0]), *SPATIAL[kernels[0] - 2]) if kernels else None
        if isinstance(weight, torch.Tensor) and 3 <= weight.ndim <= 5 and not isinstance(module, nn.Embedding):
            return (int(weight.shape[1]) * int(getattr(module, "groups", 1)), *SPATIAL[weight.ndim - 2])
        if linear is None and isinstance(module, nn.Linear):
            linear = (module.in_features,)
    return linear


def _diffusers(model: nn.Module) -> ModelCall | None:
    """A diffusers model's call from its config; a diffusers block (``ResnetBlock2D``) takes an embedding."""
    if not type(model).__module__.startswith("diffusers"):
        return None
    config = getattr(model, "config", None)
    params = forward_parameters(model)
    names = [p.name for p in params]
    required = {p.name for p in params if p.default is inspect.Parameter.empty}
    if config is None or "timestep" not in names:
        proj = getattr(model, "time_emb_proj", None)
        if isinstance(proj, nn.Linear):
            return ModelCall(convention="embedding", embedding_dim=proj.in_features, domain=DIFFUSION_STEPS,
                             input_shape=guess_input_shape(model))
        if config is not None and not set(names) & {*TIME_NAMES, *EMBEDDING_NAMES}:  # a VAE, a text encoder …
            raise ValueError(f"{type(model).__name__} takes no timestep (its forward is ({', '.join(names)})); the "
                             "audit measures models that depend on t: give the denoiser or the ODE function")
        return None
    def get(key: str, default: Any = None) -> Any:
        return config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)

    kind = type(model).__name__
    rope = "img_ids" in names and "txt_ids" in names  # Flux: packed tokens (L, C) with RoPE position ids
    shape = _sample_shape(model, get, rope)
    extras: dict[str, Input] = {}
    if "added_time_ids" in names and kind == "UNetSpatioTemporalConditionModel":
        extras["added_time_ids"] = Input(shape=(3,))  # SVD's fps, motion bucket and noise augmentation
    # the text embedding's width: what the model projects from (PixArt's caption_channels, SD3's
    # joint_attention_dim, a U-Net's encoder_hid_dim) or else what its cross-attention reads
    width = next((w for k in ("caption_channels", "encoder_hid_dim", "joint_attention_dim", "text_embed_dim",
                              "text_dim", "context_in_dim", "text_in_dim", "cap_feat_dim", "cross_attention_dim")
                  if (w := get(k)) is not None), None)
    width = width[0] if isinstance(width, (list, tuple)) else width
    if "encoder_hidden_states" in names and isinstance(width, int):
        extras["encoder_hidden_states"] = Input(shape=(8, width))
        for mask in [m for m in ("encoder_attention_mask", "encoder_mask") if m in required]:  # Mochi, Lumina 2
            extras[mask] = Input(shape=(8,), kind="ones")  # every text token kept
    for size in [n for n in ("original_size", "target_size", "crop_coords") if n in required]:  # CogView
        extras[size] = Input(shape=(2,), kind="ones")  # SDXL-style size conditioning: any size will do
    image = get("addition_embed_type") in ("image", "text_image") or get("encoder_hid_dim_type") in (
        "image_proj", "text_image_proj")
    if "added_cond_kwargs" in names and image:  # Kandinsky 2.x: CLIP image embeddings
        own = get("addition_embed_type") == "image" or get("encoder_hid_dim_type") == "image_proj"
        wide = get("encoder_hid_dim") if own else get("cross_attention_dim")
        wide = wide[0] if isinstance(wide, (list, tuple)) else wide
        if isinstance(wide, int):
            extras["added_cond_kwargs.image_embeds"] = Input(shape=(wide,))
        if isinstance(wide, int) and get("addition_embed_type") == "text_image":  # Kandinsky 2.1: pooled text too
            extras["added_cond_kwargs.text_embeds"] = Input(shape=(wide,))
    if "pooled_projections" in names and isinstance(get("pooled_projection_dim"), int):  # SD3, Flux
        extras["pooled_projections"] = Input(shape=(get("pooled_projection_dim"),))
    if "added_cond_kwargs" in names and get("addition_embed_type") == "text_time":  # SDXL: pooled text + 6 sizes
        time_ids = 6 * int(get("addition_time_embed_dim") or 0)
        text = int(get("projection_class_embeddings_input_dim") or 0) - time_ids
        if text > 0 and time_ids > 0:
            extras["added_cond_kwargs.text_embeds"] = Input(shape=(text,))
            extras["added_cond_kwargs.time_ids"] = Input(shape=(6,))
    if rope:
        channels = get("in_channels")
        shape = shape or ((16, channels) if isinstance(channels, int) else None)
        axes = len(get("axes_dims_rope") or (0, 0, 0))  # a position id per RoPE axis (Flux 3, Flux.2 4)
        extras["img_ids"] = Input(shape=(16, axes), shared=True)  # one grid of positions for the batch
        extras["txt_ids"] = Input(shape=(8, axes), shared=True)
        if get("guidance_embeds"):
            extras["guidance"] = Input()
    if "added_cond_kwargs" in names and getattr(model, "use_additional_conditions", False) is True:  # PixArt-α
        extras["added_cond_kwargs.resolution"] = Input(shape=(2,))
        extras["added_cond_kwargs.aspect_ratio"] = Input(shape=(1,))
    classes = get("num_class_embeds") or get("num_embeds_ada_norm")
    ada_steps = get("norm_type") == "ada_norm" and get("num_embeds_ada_norm")
    if "class_labels" in names and classes and not ada_steps:
        extras["class_labels"] = Input(kind="labels", high=int(classes))
    elif "class_labels" in names and get("class_embed_type") == "timestep":
        extras["class_labels"] = Input(kind="labels", high=1000)
    elif "class_labels" in names and get("class_embed_type") in ("projection", "identity"):
        widths = get("block_out_channels") or [0]
        width = (get("projection_class_embeddings_input_dim") if get("class_embed_type") == "projection"
                 else get("time_embedding_dim") or 4 * int(widths[0]))  # identity: the time embedding's width
        if isinstance(width, int) and width > 0:
            extras["class_labels"] = Input(shape=(width,))  # a vector per sample, added to the time embedding
    domain = DIFFUSION_STEPS
    if ada_steps:  # AdaLayerNorm looks t up in an embedding table of num_embeds_ada_norm rows
        domain = TimeDomain("steps", 0, int(ada_steps) - 1)
    elif get("time_embedding_type") == "fourier":
        log = getattr(getattr(model, "time_proj", None), "log", True)
        domain = EDM_SIGMAS if log else UNIT_INTERVAL  # NCSN++ feeds log σ; UNet1D (Dance Diffusion) t in [0, 1]
    elif get("num_train_timesteps"):
        domain = TimeDomain("steps", 0, int(get("num_train_timesteps")) - 1)
    elif rope or any(FOURIER.search(type(m).__name__) for m in model.modules()):
        domain = UNIT_INTERVAL  # Flux takes t in [0, 1] and scales it by 1000 itself; Fourier features: continuous t
    return ModelCall(convention="xt", time_arg="timestep", domain=domain, input_shape=shape,
                     extras=tuple(extras.items()))


def _sample_shape(model: nn.Module, get: Callable[[str], Any], rope: bool) -> tuple[int, ...] | None:
    """One input's shape from a diffusers config: (C, L) for 1-D models, (C, H, W) from ``sample_size`` (or
    ``sample_height``/``sample_width``), video as (C, F, H, W) with two frames (SVD: (F, C, H, W)); a
    transformer that keeps no size gets 4 patches a side (``probe`` tries other layouts); None for Flux's
    packed tokens (set by the caller) or an unknown channel count."""
    one_d = any(isinstance(m, nn.Conv1d) for m in model.modules()) and not any(
        isinstance(m, nn.Conv2d) for m in model.modules())
    channels, size = get("in_channels"), get("sample_size")
    if size is None and isinstance(get("sample_height"), int) and isinstance(get("sample_width"), int):
        size = (get("sample_height"), get("sample_width"))  # CogVideoX, Allegro, EasyAnimate
    patch = get("patch_size")
    patches = [v for v in (patch if isinstance(patch, (list, tuple)) else [patch]) if isinstance(v, int) and v > 0]
    if size is None and not one_d and not rope:
        size = 4 * max(patches or [2])
    if not isinstance(channels, int) or size is None:
        return None
    if one_d:
        return (channels, int(size))
    shape = (channels, *((size, size) if isinstance(size, int) else tuple(size)))
    kind = type(model).__name__
    if kind == "UNetSpatioTemporalConditionModel":  # SVD: (F, C, H, W)
        return (2, *shape)
    frames = any(isinstance(m, nn.Conv3d) for m in model.modules()) or get("sample_frames") is not None
    if len(shape) == 3 and (frames or kind == "UNet3DConditionModel"):
        time_patch = get("patch_size_t") or (patches[0] if len(patches) == 3 else 1)
        return (channels, 2 * int(time_patch), *shape[1:])  # video: (C, F, H, W), two frames (patches)
    return shape


def probe(model: nn.Module, call: ModelCall, n: int = 2, guessed: bool = False) -> ModelCall:
    """Call the model once on small inputs; returns the call that worked (with ``guessed`` shapes, also the
    one with a channel fewer: a t channel concatenated inside). A failure is one line saying what the model
    wanted."""
    shapes = [call.input_shape]
    if guessed and call.input_shape and len(call.input_shape) > 1:  # also a channel fewer, smaller maps
        c, space = call.input_shape[0], call.input_shape[1:]
        smaller = [tuple(max(1, s // d) for s in space) for d in (1, 2, 4)]
        shapes = list(dict.fromkeys([*((ch, *sp) for sp in smaller for ch in (c, c - 1) if ch >= 1),
                                     *_layouts(call.input_shape)]))
    first: BaseException | None = None
    was = model.training
    try:
        model.train(call.mode == "train")
        trials = [call.replace(input_shape=shape) for shape in shapes]
        for trial in trials:
            x, extras = trial.example(n, dtype=model_dtype(model))
            try:
                with torch.no_grad():
                    out = trial.invoke(model, x, trial.timesteps(2)[:1].expand(n), extras)
            except (TypeError, RuntimeError, ValueError, IndexError, KeyError, AssertionError, AttributeError) as err:
                if first is None or (trial.float_steps and INTEGER_REFUSED.search(str(first))):
                    first = err  # the error of the shape as detected (with steps as floats, if ints were refused)
                if INTEGER_REFUSED.search(str(err)) and not trial.timesteps(2).is_floating_point():
                    trials.append(trial.replace(float_steps=True))  # HunyuanDiT: its embedding wants float steps
                continue
            if out.ndim == 0 or out.shape[0] != n:  # a solver's (t_eval, trajectory), or a fixed token grid
                first = first or ValueError(
                    f"returns a tensor of shape {tuple(out.shape)} for {n} inputs (its first tensor), not one "
                    "output per input: give the network inside it that maps x to its output (a torchdyn "
                    "NeuralODE's .vf), or the input shape it was built for (--input-shape)")
                continue
            return trial
    finally:
        model.train(was)
    shape = tuple(call.input_shape or ())
    hint = _hint(model, call)
    if model_dtype(model) == torch.float64 and any(w in str(first) for w in ("Double", "double", "mixed dtype")):
        hint = "the model makes float32 tensors inside its forward, so it cannot run in float64: audit it in float32"
    raise ValueError(f"calling {type(model).__name__} as {call.name} on inputs of shape {shape} failed: "
                     f"{_first_line(first or RuntimeError())}; {hint}") from None


def _layouts(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Other layouts of a guessed (C, ...) input that models of the same config use: a map as video frames,
    (C, F, H, W) or (F, C, H, W) (CogVideoX), or as 16 packed tokens (L, C); video frames first."""
    c, *space = shape
    if len(space) == 2:
        return [(c, 2, *space), (2, c, *space), (16, c)]
    if len(space) == 3:  # (C, F, H, W): (F, C, H, W), or a map after all
        return [(space[0], c, *space[1:]), (c, *space[1:])]
    return []


def _hint(model: nn.Module, call: ModelCall) -> str:
    params = forward_parameters(model)
    given = {"x", *(name for name, _ in call.extras)}
    missing = [p.name for p in params[1:] if p.default is inspect.Parameter.empty and p.name not in given
               and p.name != call.time_arg]
    if missing and call.convention == "xt" and not call.time_arg:
        return (f"its forward also wants {', '.join(repr(m) for m in missing)}: if {missing[0]!r} is t, give "
                f"--time-arg {missing[0]}; if it is another input, --input {missing[0]}=SHAPE")
    if missing:
        return f"its forward also wants {', '.join(repr(m) for m in missing)}: give it with --input NAME=SHAPE"
    signature = ", ".join(p.name for p in params)
    return (f"its forward is ({signature}); set --call, --time-arg, --input-shape or --input NAME=SHAPE "
            "to match it")


def _first_line(err: BaseException) -> str:
    """The error's first line; its last when the first opens a module's repr (``Net(`` … ``).forward() got …``)."""
    text = [line for line in str(err).strip().splitlines() if line.strip()]
    line = "" if not text else text[-1] if text[0].endswith("(") else text[0]
    return f"{type(err).__name__}: {line.strip()}"
