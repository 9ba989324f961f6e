"""Dynamic int8 quantisation of a model's nn.Linear layers, saved and loaded without pickle.

`torch.ao.quantization.quantize_dynamic` stores each quantised Linear's weight as int8 (a scale and zero point
per tensor or per output channel) and quantises activations on the fly per batch. Its modules hold packed
parameters that only `torch.save` (pickle) can write, and the workbench never reads pickle from a folder someone
shares. So the folder holds plain tensors instead:

    model.int8.safetensors   <linear>.weight_int8 (int8), <linear>.weight_scale (float64),
                             <linear>.weight_zero_point (int64), <linear>.bias (float32, when there is one),
                             and every other tensor of the model as it was (embeddings, norms)
    quantization.json        method, scheme (per-tensor/per-channel, axis) and the quantised module names

`load_int8` rebuilds the model: the fp32 architecture from config.json (no weights read), the other tensors loaded,
`quantize_dynamic` applied to the recorded Linear modules, then each one's int8 weight and bias put back with
`set_weight_bias`. Only `safetensors.torch.load_file` reads tensors; `torch.load` is never called.

torch 2.13 marks `torch.ao.quantization` deprecated in favour of torchao (its warning is silenced here); the API
still works and needs no extra package. The int8 kernels are fbgemm/x86 ones: the speed-up is on x86 CPUs.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError

WEIGHTS = "model.int8.safetensors"
RECORD = "quantization.json"


def _quantize_dynamic(model: torch.nn.Module, names: set[str] | None = None) -> torch.nn.Module:
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    spec: Any = {torch.nn.Linear} if names is None else {n: default_dynamic_qconfig for n in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)


def _is_qlinear(m: torch.nn.Module) -> bool:
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    return isinstance(m, QLinear)


def quantize_int8(model: torch.nn.Module) -> tuple[torch.nn.Module, dict[str, torch.Tensor], list[str]]:
    """(the model with its Linear layers quantised, in place; its tensors as plain tensors; the quantised names)."""
    model = model.float().eval()
    linear = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    plain = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()
             if k.rpartition(".")[0] not in linear}
    _quantize_dynamic(model, None)
    tensors = dict(plain)
    names = []
    for name, m in model.named_modules():
        if not _is_qlinear(m):
            continue
        names.append(name)
        w = m.weight()
        tensors[f"{name}.weight_int8"] = w.int_repr().contiguous()
        if w.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            tensors[f"{name}.weight_scale"] = torch.tensor([w.q_scale()], dtype=torch.float64)
            tensors[f"{name}.weight_zero_point"] = torch.tensor([w.q_zero_point()], dtype=torch.int64)
        else:
            tensors[f"{name}.weight_scale"] = w.q_per_channel_scales().to(torch.float64).contiguous()
            tensors[f"{name}.weight_zero_point"] = w.q_per_channel_zero_points().to(torch.int64).contiguous()
            tensors[f"{name}.weight_axis"] = torch.tensor([w.q_per_channel_axis()], dtype=torch.int64)
        b = m.bias()
        if b is not None:
            tensors[f"{name}.bias"] = b.detach().float().contiguous()
    return model, tensors, names


def save_int8(model: torch.nn.Module, folder: Path) -> list[str]:
    """Quantise `model` (in place) and write its tensors and record into `folder`; returns the quantised names."""
    from safetensors.torch import save_file

    model, tensors, names = quantize_int8(model)
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt", "workbench": "int8-dynamic"})
    (folder / RECORD).write_text(json.dumps({"method": "int8-dynamic", "dtype": "qint8",
                                             "engine": torch.backends.quantized.engine,
                                             "modules": names}, indent=2), encoding="utf-8")
    return names


def load_int8(folder: Path, auto_model: str) -> torch.nn.Module:
    """The int8 model saved by `save_int8` in `folder`, rebuilt from config.json and safetensors alone."""
    import transformers
    from safetensors.torch import load_file
    from transformers import AutoConfig

    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
        names = record["modules"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("modules is not a list of names")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{folder / RECORD} cannot be read ({type(e).__name__}: {e}); the int8 folder is damaged. "
                         f"Fix: quantise the run again.") from None
    try:
        tensors = load_file(str(folder / WEIGHTS))
    except Exception as e:  # noqa: BLE001 - safetensors' own error type, OSError: a damaged or missing file
        raise ModelError(f"{folder / WEIGHTS} cannot be read ({type(e).__name__}: {str(e)[:160]}); the int8 folder "
                         f"is damaged. Fix: quantise the run again.") from None
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
        model = getattr(transformers, auto_model).from_config(config, dtype=torch.float32).eval()
    except Exception as e:  # noqa: BLE001 - a damaged or foreign config.json
        raise ModelError(f"{folder / 'config.json'} does not describe a model this workbench can build "
                         f"({type(e).__name__}: {str(e)[:160]}). Fix: quantise the run again.") from None
    modules = dict(model.named_modules())
    unknown = [n for n in names if not isinstance(modules.get(n), torch.nn.Linear)]
    if unknown:
        raise ModelError(f"{folder / RECORD} names modules that are not Linear layers of this architecture: "
                         f"{unknown[:5]}. Fix: quantise the run again.")
    bad = [p for n in names for p in _int8_problems(n, modules[n], tensors)]
    if bad:
        raise ModelError(f"{folder / WEIGHTS} does not hold the int8 layers {RECORD} names: {'; '.join(bad[:3])}"
                         f"{f' (and {len(bad) - 3} more)' if len(bad) > 3 else ''}. Fix: quantise the run again.")
    plain = {k: v for k, v in tensors.items() if k.rpartition(".")[0] not in set(names)}
    missing, unexpected = model.load_state_dict(plain, strict=False)
    missing = [k for k in missing if k.rpartition(".")[0] not in set(names)
               and not _tied(model, k)]
    if missing or unexpected:
        raise ModelError(f"{folder / WEIGHTS} does not fit config.json: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}. Fix: quantise the run again.")
    _quantize_dynamic(model, set(names))
    for name, m in model.named_modules():
        if name not in names:
            continue
        q = tensors[f"{name}.weight_int8"]
        scale, zp = tensors[f"{name}.weight_scale"], tensors[f"{name}.weight_zero_point"]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if f"{name}.weight_axis" in tensors:
                    w = torch._make_per_channel_quantized_tensor(q, scale, zp,
                                                                  int(tensors[f"{name}.weight_axis"][0]))
                else:
                    w = torch._make_per_tensor_quantized_tensor(q, float(scale[0]), int(zp[0]))
            m.set_weight_bias(w, tensors.get(f"{name}.bias"))
        except (RuntimeError, ValueError, IndexError) as e:
            raise ModelError(f"{folder / WEIGHTS}: the int8 layer {name} cannot be rebuilt ({type(e).__name__}: "
                             f"{str(e)[:160]}). Fix: quantise the run again.") from None
    return model


def _int8_problems(name: str, linear: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> list[str]:
    """What is wrong with the tensors of one quantised Linear layer (empty: they fit it)."""
    out, n_in = linear.out_features, linear.in_features
    want = {"weight_int8": (torch.int8, (out, n_in)), "weight_scale": (None, None),
            "weight_zero_point": (None, None)}
    problems = []
    for part, (dtype, shape) in want.items():
        t = tensors.get(f"{name}.{part}")
        if t is None:
            problems.append(f"{name}.{part} is missing")
        elif dtype is not None and t.dtype != dtype:
            problems.append(f"{name}.{part} is {t.dtype}, not {dtype}")
        elif shape is not None and tuple(t.shape) != shape:
            problems.append(f"{name}.{part} has shape {tuple(t.shape)}, not (out_features, in_features) = {shape}")
    scale, zp = tensors.get(f"{name}.weight_scale"), tensors.get(f"{name}.weight_zero_point")
    if scale is not None and zp is not None:
        n = out if f"{name}.weight_axis" in tensors else 1
        if not scale.is_floating_point() or zp.is_floating_point() or scale.numel() != n or zp.numel() != n:
            problems.append(f"{name}: want {n} float scale(s) and {n} whole-number zero point(s)")
    bias = tensors.get(f"{name}.bias")
    if bias is not None and tuple(bias.shape) != (out,):
        problems.append(f"{name}.bias has shape {tuple(bias.shape)}, not ({out},)")
    return problems


def _tied(model: torch.nn.Module, key: str) -> bool:
    """A weight tied to another one (e.g. an output layer sharing the input embeddings), absent from the file."""
    keys = getattr(model, "_tied_weights_keys", None) or {}
    return key in keys
