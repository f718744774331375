"""Low-memory optimizer state: ``state_dtype`` (constructor keyword of every pyfastopt optimizer,
kept per param group).

- ``state_dtype=None`` (default): torch's layout (the parameter's dtype; float32 beside a master
  copy). ``torch.float32`` means the same for float32 parameters.
- ``state_dtype=torch.bfloat16``: every state buffer in bfloat16, computed in float32 and rounded
  once per step (to nearest even; stochastically with ``state_stochastic_rounding=True``).
- ``state_dtype="8bit"``: block-wise 8-bit state (Dettmers et al. 2022). Each buffer ``k`` of a
  tensor with at least ``min_8bit_size`` elements (default 4096) is stored as

  - ``state[k]``: uint8 codes, the parameter's shape (contiguous);
  - ``state[k + "_absmax"]``: float32, one scale per ``block_size`` elements (default 256) of the
    flattened tensor: the block's absolute maximum;
  - ``state[k + "_qmap"]``: the 256 float32 values a code stands for: bitsandbytes' signed
    dynamic map for signed buffers (``exp_avg``, ``momentum_buffer``, ``grad_avg``, ``ax``,
    ``prev``), the unsigned one for those never negative (``exp_avg_sq``, ``max_exp_avg_sq``,
    ``sum``, ``square_avg``, ``acc_delta``, ``exp_inf``, ``step_size``). One tensor shared by
    every parameter.

  Smaller tensors keep torch's layout. Code ``c`` of a block with scale ``s`` reads as
  ``qmap[c] * s``; a step dequantises, runs the float32 rule and requantises with exact
  nearest-code rounding in the same pass.

float64 parameters keep float64 state whatever ``state_dtype`` says. ``torch_state_dict()``
exports a state_dict with every buffer as a float32 tensor in torch's layout, which
``torch.optim`` loads; a torch (float32) state_dict loads into a low-memory optimizer and is
converted on load.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import _core
from ..errors import StateError, UnsupportedError
from ._layout import LOW_PRECISION
from ._state import SCALAR_KEYS, describe

AS_PARAM, BF16, BF16_SR, BLOCK8 = 0, 1, 2, 3
OPTIONS = ("state_dtype", "block_size", "min_8bit_size", "state_stochastic_rounding")
DEFAULTS: dict[str, Any] = {
    "state_dtype": None,
    "block_size": 256,
    "min_8bit_size": 4096,
    "state_stochastic_rounding": False,
}
#: buffers that are never negative: the unsigned map (every other buffer takes the signed one).
#: The rules' kUnsignedBuffers (csrc/include/pyfastopt/rules.h) list the same buffers.
UNSIGNED_KEYS = frozenset(
    {"exp_avg_sq", "max_exp_avg_sq", "sum", "square_avg", "acc_delta", "exp_inf", "step_size"}
)
ABSMAX, QMAP = "_absmax", "_qmap"
_NAMES = {
    None: None,
    "float32": "float32",
    torch.float32: "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    torch.bfloat16: "bfloat16",
    "8bit": "8bit",
    "int8": "8bit",
    "uint8": "8bit",
    torch.uint8: "8bit",
}


def canonical(value: Any) -> str | None:
    """``state_dtype`` as stored in a group: None, "float32", "bfloat16" or "8bit"."""
    try:
        return _NAMES[value]
    except (KeyError, TypeError):
        raise ValueError(
            f"state_dtype must be None, torch.float32, torch.bfloat16 or '8bit'; got {value!r}"
        ) from None


def asks_low_memory(group: dict) -> bool:
    """Whether the group's ``state_dtype`` asks for a store other than torch's layout."""
    return group.get("state_dtype") not in (None, "float32")


def split_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove the low-memory keywords from a constructor's ``kwargs``; return the group keys
    (none when ``state_dtype`` is left at torch's layout and nothing else is asked)."""
    given = {k: kwargs.pop(k) for k in OPTIONS if k in kwargs}
    if not given:
        return {}
    keys = dict(DEFAULTS)
    keys.update(given)
    check_group(keys, "constructor")
    return keys


def check_group(group: dict, where: str) -> None:
    """Validate (and canonicalise) a group's low-memory keys in place."""
    if not any(k in group for k in OPTIONS):
        return
    group["state_dtype"] = canonical(group.get("state_dtype"))
    block = group.get("block_size", DEFAULTS["block_size"])
    if isinstance(block, bool) or not isinstance(block, int) or not 16 <= block <= 4096:
        raise ValueError(f"{where}: block_size must be an int in [16, 4096]; got {block!r}")
    if block % 16:
        raise ValueError(f"{where}: block_size must be a multiple of 16; got {block}")
    small = group.get("min_8bit_size", DEFAULTS["min_8bit_size"])
    if isinstance(small, bool) or not isinstance(small, int) or small < 0:
        raise ValueError(f"{where}: min_8bit_size must be an int >= 0; got {small!r}")
    sr = group.get("state_stochastic_rounding", False)
    if not isinstance(sr, bool):
        raise ValueError(f"{where}: state_stochastic_rounding must be a bool; got {sr!r}")
    group["block_size"], group["min_8bit_size"], group["state_stochastic_rounding"] = (
        block,
        small,
        sr,
    )


def row_store(p: torch.Tensor, group: dict, master: bool, where: str) -> int:
    """How the step stores ``p``'s state: AS_PARAM, BF16, BF16_SR or BLOCK8."""
    if p.dtype not in (torch.float32, *LOW_PRECISION) or p.is_complex():
        return AS_PARAM  # float64 and complex: torch's layout
    kind = group.get("state_dtype")
    sr = bool(group.get("state_stochastic_rounding"))
    if kind == "8bit" and p.numel() >= group.get("min_8bit_size", DEFAULTS["min_8bit_size"]):
        return BLOCK8
    if kind == "bfloat16" or (p.dtype == torch.bfloat16 and not master and sr):
        if p.dtype == torch.float16 and not master:
            raise UnsupportedError(
                f"{where}: bfloat16 state for a float16 parameter is not supported; use "
                "master_weights=True or state_dtype='8bit'"
            )
        return BF16_SR if sr else BF16
    if kind == "float32" and p.dtype in LOW_PRECISION and not master:
        raise UnsupportedError(
            f"{where}: float32 state for a {p.dtype} parameter comes with its float32 master "
            "copy: use master_weights=True"
        )
    if sr and kind != "8bit":
        raise UnsupportedError(
            f"{where}: state_stochastic_rounding applies to bfloat16 state "
            "(state_dtype=torch.bfloat16, or bfloat16 parameters)"
        )
    return AS_PARAM


def float_dtype(p: torch.Tensor, store: int, as_param: torch.dtype) -> torch.dtype | None:
    """The dtype of ``p``'s state buffers for a float store (None: 8-bit)."""
    if store == BLOCK8:
        return None
    return torch.bfloat16 if store in (BF16, BF16_SR) else as_param


# ---- the maps and conversions ----------------------------------------------------------------

_REFERENCE: dict[bool, torch.Tensor] = {}  # the maps themselves: never handed out
_MAPS: dict[bool, tuple[torch.Tensor, int]] = {}  # the copy every state holds, and its version


def _reference(unsigned: bool) -> torch.Tensor:
    m = _REFERENCE.get(unsigned)
    if m is None:
        m = _REFERENCE[unsigned] = torch.tensor(_core.quant_map(unsigned), dtype=torch.float32)
    return m


def qmap(unsigned: bool) -> torch.Tensor:
    """The 256-value map a state holds beside its codes: one tensor shared by every parameter,
    a copy of the reference, so a state's map edited in place (its version counter moves) is
    caught by ``check_codes`` and never changes what other checkpoints are compared with."""
    entry = _MAPS.get(unsigned)
    if entry is None or entry[0]._version != entry[1]:
        m = _reference(unsigned).clone()
        entry = _MAPS[unsigned] = (m, m._version)
    return entry[0]


def _is_shared_map(m: object, unsigned: bool) -> bool:
    entry = _MAPS.get(unsigned)
    return entry is not None and m is entry[0] and entry[0]._version == entry[1]


def blocks(numel: int, block: int) -> int:
    return -(-numel // block)


def quantize(x: torch.Tensor, unsigned: bool, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes like ``x``, scales) of a floating tensor, exactly as a step stores them."""
    src = x.detach().to(device="cpu", dtype=torch.float32).contiguous()
    codes = torch.empty(src.shape, dtype=torch.uint8)
    scales = torch.empty(blocks(src.numel(), block), dtype=torch.float32)
    _core.quantize_blockwise(
        src.data_ptr(), codes.data_ptr(), scales.data_ptr(), src.numel(), block, unsigned
    )
    return codes, scales


def dequantize(
    codes: torch.Tensor, scales: torch.Tensor, unsigned: bool, block: int
) -> torch.Tensor:
    """The float32 values of 8-bit state (checked with ``check_codes`` first)."""
    c = codes.detach().contiguous()
    s = scales.detach().contiguous()
    out = torch.empty(c.shape, dtype=torch.float32)
    _core.dequantize_blockwise(
        c.data_ptr(), s.data_ptr(), out.data_ptr(), c.numel(), block, unsigned
    )
    return out


# ---- validation and conversion of a parameter's state ------------------------------------------


def _plain(t: Any) -> bool:
    return (
        type(t) is torch.Tensor
        and t.device.type == "cpu"
        and t.layout == torch.strided
        and not t.is_neg()
        and not t.is_conj()
    )


def check_codes(p: torch.Tensor, st: dict, key: str, block: int, where: str) -> None:
    """8-bit buffer ``key``: contiguous uint8 codes like ``p``, a float32 scale per block and
    the right map; raises StateError otherwise (never reads out of bounds)."""
    codes, scales, m = st.get(key), st.get(key + ABSMAX), st.get(key + QMAP)
    if not (_plain(codes) and codes.dtype == torch.uint8 and codes.shape == p.shape):
        raise StateError(
            f"{where}: state[{key!r}] must hold uint8 codes shaped like the parameter "
            f"{tuple(p.shape)}; got {describe(codes)}"
        )
    if not codes.is_contiguous():
        st[key] = codes = codes.contiguous()
    n = blocks(p.numel(), block)
    if not (_plain(scales) and scales.dtype == torch.float32 and scales.shape == (n,)):
        raise StateError(
            f"{where}: state[{key + ABSMAX!r}] must be a float32 vector of {n} block scales "
            f"({p.numel()} elements, block_size {block}); got {describe(scales)}"
        )
    if not scales.is_contiguous():
        st[key + ABSMAX] = scales.contiguous()
    unsigned = key in UNSIGNED_KEYS
    if not _is_shared_map(m, unsigned):
        if not (isinstance(m, torch.Tensor) and m.dtype == torch.float32 and m.shape == (256,)):
            raise StateError(
                f"{where}: state[{key + QMAP!r}] must be the 256 float32 values of the "
                f"{'unsigned' if unsigned else 'signed'} dynamic map; got {describe(m)}"
            )
        if not torch.equal(m.detach().cpu(), _reference(unsigned)):
            raise StateError(
                f"{where}: state[{key + QMAP!r}] is not pyfastopt's "
                f"{'unsigned' if unsigned else 'signed'} dynamic map (codes from another map "
                "cannot be read; was it modified in place?)"
            )
        st[key + QMAP] = qmap(unsigned)


def is_codes(st: dict, key: str) -> bool:
    """Whether ``st[key]`` holds 8-bit codes (uint8, with their block scales beside them)."""
    b = st.get(key)
    return isinstance(b, torch.Tensor) and b.dtype == torch.uint8 and key + ABSMAX in st


def _drop_aux(st: dict, key: str) -> None:
    st.pop(key + ABSMAX, None)
    st.pop(key + QMAP, None)


#: the float formats state may change between (a store of another group setting, a checkpoint)
FORMATS = (torch.float32, torch.bfloat16, torch.float16)


def check_saved_codes(saved: dict, where: str) -> None:
    """Refuse a checkpoint's state whose 8-bit codes are not uint8 while their scales are
    there: torch.optim's ``load_state_dict`` casts the codes to the parameter's dtype (a
    pyfastopt 8-bit checkpoint passed through torch.optim), so their values are code numbers,
    not state, and quantising or stepping them would be silently wrong. (pyfastopt's own
    ``state_dict`` never holds scales beside a float buffer.)"""
    for k, v in saved.items():
        scales = saved.get(f"{k}{ABSMAX}")
        if isinstance(v, torch.Tensor) and v.dtype != torch.uint8 and scales is not None:
            raise StateError(
                f"{where}: state[{k!r}] is {v.dtype} but {k + ABSMAX!r} holds 8-bit scales: "
                "these are 8-bit codes converted to numbers (a pyfastopt 8-bit state_dict "
                "loaded into torch.optim?); export with torch_state_dict() for torch"
            )


def kept_as_saved(key: str, v: Any, p: torch.Tensor) -> bool:
    """Whether a checkpoint's state tensor is one of pyfastopt's layouts that torch's loader
    would corrupt by casting it to the parameter's dtype: 8-bit codes and their scales and map,
    float32 state or master copies of a 16-bit parameter, bfloat16 state of a float32 or float16
    one (float16 would overflow), and float32/float64 0-d state scalars of a 16-bit parameter."""
    if not isinstance(v, torch.Tensor) or v.dtype == p.dtype:
        return False
    if v.dtype == torch.uint8 or key.endswith((ABSMAX, QMAP)):
        return True
    if key in SCALAR_KEYS:  # 0-d scalars (mu_product, eta, mu): not rounded to 16 bits
        return p.dtype in LOW_PRECISION and v.dtype in (torch.float32, torch.float64)
    if p.dtype in LOW_PRECISION:  # float32 state or master copies; bfloat16 state of float16
        return v.dtype == torch.float32 or v.dtype == torch.bfloat16
    return p.dtype == torch.float32 and v.dtype == torch.bfloat16


def settle(
    p: torch.Tensor,
    st: dict,
    keys: tuple[str, ...],
    store: int,
    as_param: torch.dtype,
    block: int,
    where: str,
    made_with: int | None = None,
) -> None:
    """Bring the buffers ``keys`` of ``p`` to the form ``store`` asks for: a float buffer of
    another dtype is cast, 8-bit codes are dequantised into a float store (or re-quantised in
    blocks of ``block`` where they were made with blocks of ``made_with``), a float buffer is
    quantised into an 8-bit one. What cannot be converted is left for the checks to refuse."""
    want = float_dtype(p, store, as_param)
    made_with = block if made_with is None else made_with
    for k in keys:
        b = st.get(k)
        if not isinstance(b, torch.Tensor):
            continue
        if is_codes(st, k) and (want is not None or made_with != block):
            check_codes(p, st, k, made_with, where)
            vals = dequantize(st[k], st[k + ABSMAX], k in UNSIGNED_KEYS, made_with)
            if want is None:  # another block size: the same values, in the new blocks
                codes, scales = quantize(vals, k in UNSIGNED_KEYS, block)
                st[k], st[k + ABSMAX], st[k + QMAP] = codes, scales, qmap(k in UNSIGNED_KEYS)
                continue
            st[k] = vals.to(dtype=want, device=p.device)
            _drop_aux(st, k)
            continue
        if want is not None:
            if b.dtype != want and b.dtype in FORMATS and want in FORMATS and b.shape == p.shape:
                # between the formats a store or master copy switches (never to float64 or
                # complex: a float32 buffer of a parameter made float64 or complex through
                # ``.data`` is refused by the checks, as torch's step refuses or keeps it)
                st[k] = b.detach().to(want)
            continue
        if b.dtype in (*FORMATS, p.dtype) and b.shape == p.shape:
            if st.get(k + ABSMAX) is not None:  # codes converted to numbers (``st[k].float()``)
                raise StateError(
                    f"{where}: state[{k!r}] is {b.dtype} but {k + ABSMAX!r} still holds 8-bit "
                    "scales: are these 8-bit codes converted to numbers? To give the state new "
                    f"values, delete {k + ABSMAX!r} and {k + QMAP!r} as well"
                )
            codes, scales = quantize(b, k in UNSIGNED_KEYS, block)
            st[k], st[k + ABSMAX], st[k + QMAP] = codes, scales, qmap(k in UNSIGNED_KEYS)


def init_compact(
    init: Callable[[torch.Tensor, dict], None],
    like: torch.Tensor,
    st: dict,
    keys: tuple[str, ...],
    store: int,
    block: int,
) -> None:
    """Make a fresh state for a bfloat16 or 8-bit ``store`` at its final size.

    ``init(t, st)`` is the optimizer's own initialisation (torch's initial state for ``t``). It
    runs on a 0-d stand-in of ``like``, and each buffer of ``keys``, one value there, is spread
    to ``like``'s shape in the store's format: the same codes, scales and bfloat16 values as
    making torch's buffers and converting them (``settle``), without a buffer of ``like``'s
    size in its own dtype on the way (for 8-bit Adam that was 8 bytes per element, four times
    the state it leaves). An initial state that is not one value per buffer is made at full
    size and converted as before.
    """
    if store == AS_PARAM:
        init(like, st)
        return
    before = set(st)
    init(torch.zeros((), dtype=like.dtype, device=like.device), st)
    made = set(st) - before
    if made - SCALAR_KEYS != set(keys) or not all(st[k].dim() == 0 for k in keys):
        init(like, st)  # (the same keys again, at full size)
        return
    for k in keys:
        v = st[k].detach()
        if store == BLOCK8:
            unsigned = k in UNSIGNED_KEYS
            codes, scales = quantize(v.expand(block), unsigned, block)
            st[k] = torch.full(like.shape, int(codes[0]), dtype=torch.uint8)
            st[k + ABSMAX] = torch.full(
                (blocks(like.numel(), block),), float(scales[0]), dtype=torch.float32
            )
            st[k + QMAP] = qmap(unsigned)
        else:
            out = torch.empty_like(like, dtype=torch.bfloat16, memory_format=torch.preserve_format)
            st[k] = out.copy_(v)


def check_state(
    p: torch.Tensor,
    st: dict,
    keys: tuple[str, ...],
    store: int,
    as_param: torch.dtype,
    block: int,
    where: str,
    check_buffer: Any,
) -> None:
    """Validate every buffer of ``p`` for ``store`` (``check_buffer``: the float check)."""
    want = float_dtype(p, store, as_param)
    for k in keys:
        if want is None:
            check_codes(p, st, k, block, where)
        else:
            check_buffer(p, st, k, where, want)


def scale_tensors(st: dict, keys: tuple[str, ...]) -> list[torch.Tensor]:
    return [st[k + ABSMAX] for k in keys]


def aux_keys(keys: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(k + ABSMAX for k in keys)


def state_bytes(state: Any) -> int:
    """Bytes held by the optimizer state's tensors (a shared map counted once)."""
    seen: set[int] = set()
    total = 0
    for st in state.values():
        if not isinstance(st, dict):
            continue
        for v in st.values():
            if isinstance(v, torch.Tensor) and id(v) not in seen:
                seen.add(id(v))
                total += v.numel() * v.element_size()
    return total


def float32_state(st: dict, block: int, where: str) -> dict:
    """One parameter's state in torch's layout, every buffer float32 (the export); ``block``:
    the block size its 8-bit codes were made with."""
    out: dict = {}
    for k, v in st.items():
        if k.endswith((ABSMAX, QMAP)) or k == "master_weight":
            continue
        if is_codes(st, k):
            check_codes(v, st, k, block, where)  # never reads past the scales
            out[k] = dequantize(st[k], st[k + ABSMAX], k in UNSIGNED_KEYS, block)
        elif isinstance(v, torch.Tensor) and k not in SCALAR_KEYS and v.dtype in FORMATS:
            # 16-bit state widened; float64 state (of float64 parameters) kept, as torch has it
            out[k] = v.detach().to(torch.float32, copy=True)
        elif isinstance(v, torch.Tensor):
            out[k] = v.detach().clone()
        else:
            out[k] = v
    return out
