"""Type stubs of the native core (csrc/bindings/module.cpp)."""

from collections.abc import Callable, Sequence
from typing import Any

class Plan:
    """A validated step table plus what must hold for it to stay valid."""

    def __init__(
        self,
        group_params: list[Any],
        rows: list[tuple],
        table: Sequence[int],
        width: int,
        written: list[Any],
        bump: Callable[[list[Any]], None],
        extents: Sequence[tuple[int, int]],
        grad_bytes: Sequence[int],
    ) -> None: ...
    def collect(self, params: list[Any], state: dict, grads_written: bool = False) -> bool: ...
    def add_extents(self, extents: Sequence[tuple[int, int]]) -> None: ...
    def set_aux(self, aux: Sequence[int]) -> None: ...
    @property
    def table(self) -> list[int]: ...
    @property
    def width(self) -> int: ...
    def __len__(self) -> int: ...

_Source = Sequence[int] | Plan

def sgd_step(
    source: _Source,
    params: list[Any] | None,
    state: dict | None,
    width: int,
    dtype: int,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    num_threads: int,
    parallel_min: int,
) -> bool: ...
def adagrad_step(
    source: _Source,
    params: list[Any] | None,
    state: dict | None,
    width: int,
    dtype: int,
    step_f64: bool,
    lr: float,
    lr_decay: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
    num_threads: int,
    parallel_min: int,
) -> bool: ...
def adadelta_step(
    source: _Source,
    params: list[Any] | None,
    state: dict | None,
    width: int,
    dtype: int,
    step_f64: bool,
    lr: float,
    rho: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
    num_threads: int,
    parallel_min: int,
) -> bool: ...
def rmsprop_step(
    source: _Source,
    params: list[Any] | None,
    state: dict | None,
    width: int,
    dtype: int,
    step_f64: bool,
    lr: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    maximize: bool,
    num_threads: int,
    parallel_min: int,
) -> bool: ...
def adam_step(
    source: _Source,
    params: list[Any] | None,
    state: dict | None,
    width: int,
    dtype: int,
    step_f64: bool,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    decoupled: bool,
    num_threads: int,
    parallel_min: int,
) -> bool: ...
def nadam_step(
    source: _Source,
    params: list[Any] | None,
    state: dict | None,
    width: int,
    dtype: int,
    step_f64: bool,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    momentum_decay: float,
    maximize: bool,
    decoupled: bool,
    num_threads: int,
    parallel_min: int,
    extra: tuple | None,
) -> bool: ...
def radam_step(
    source: _Source,
    params: list[Any] | None,
    state: dict | None,
    width: int,
    dtype: int,
    step_f64: bool,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
    decoupled: bool,
    num_threads: int,
    parallel_min: int,
    extra: tuple | None,
) -> bool: ...
def adamax_step(
    source: _Source,
    params: list[Any] | None,
    state: dict | None,
    width: int,
    dtype: int,
    step_f64: bool,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
    num_threads: int,
    parallel_min: int,
    extra: tuple | None,
) -> bool: ...
def asgd_step(
    source: _Source,
    params: list[Any] | None,
    state: dict | None,
    width: int,
    dtype: int,
    step_f64: bool,
    lr: float,
    lambd: float,
    alpha: float,
    t0: float,
    weight_decay: float,
    maximize: bool,
    default_dtype: int,
    num_threads: int,
    parallel_min: int,
    extra: tuple | None,
) -> bool: ...
def rprop_step(
    source: _Source,
    params: list[Any] | None,
    state: dict | None,
    width: int,
    dtype: int,
    step_f64: bool,
    etaminus: float,
    etaplus: float,
    step_size_min: float,
    step_size_max: float,
    maximize: bool,
    num_threads: int,
    parallel_min: int,
    extra: tuple | None,
) -> bool: ...
def adafactor_step(
    source: _Source,
    params: list[Any] | None,
    state: dict | None,
    width: int,
    dtype: int,
    step_f64: bool,
    lr: float,
    beta2_decay: float,
    eps1: float,
    eps2: float,
    d: float,
    weight_decay: float,
    maximize: bool,
    num_threads: int,
    parallel_min: int,
    extra: tuple | None,
) -> bool: ...
def sparse_adam_step(
    source: Sequence[int],
    width: int,
    dtype: int,
    beta1: float,
    beta2: float,
    eps: float,
    maximize: bool,
    num_threads: int,
    parallel_min: int,
) -> bool: ...
def clip_grad_norm(
    table: Sequence[int],
    norm_type: float,
    max_norm: float,
    out_dtype: int,
    out_addr: int,
    scale: bool,
    error_if_nonfinite: bool,
    num_threads: int,
    parallel_min: int,
) -> tuple[int, float, bool]: ...
def vector_program(
    rows: Sequence[int],
    lists: int,
    flats: Sequence[int],
    dtype: int,
    code: Sequence[int],
    scalars: Sequence[float],
    nresults: int,
    num_threads: int,
    parallel_min: int,
) -> list[float]: ...
def lbfgs_direction(
    rows: Sequence[int],
    lists: int,
    flats: Sequence[int],
    dtype: int,
    g: int,
    d: int,
    prev: int,
    dirs: Sequence[int],
    stps: Sequence[int],
    ro: Sequence[float],
    h_diag: float,
    first: bool,
    num_threads: int,
    parallel_min: int,
) -> tuple[list[float], float, float, float]: ...
def simd_path() -> str: ...
def select_simd(name: str) -> str: ...
def supported_simd() -> list[str]: ...
def build_info() -> dict[str, Any]: ...
def openmp_max_threads() -> int: ...
def time_signature_reads(tensor: Any, reps: int = 100000) -> list[tuple[str, float]]: ...
def use_torch_abi(samples: list[Any], on: bool = True) -> bool: ...
def torch_abi_enabled() -> bool: ...
