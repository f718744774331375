"""Hugging Face ``transformers.Trainer`` and PyTorch Lightning train with pyfastopt optimizers
exactly as with torch.optim's.

Every parity test trains the same tiny model twice, same seed, same data, same framework
configuration, once with ``torch.optim.X(foreach=False)`` and once with ``pyfastopt.X``, and
compares the final parameters. SGD (momentum, Nesterov) must agree bit for bit; the adaptive
methods differ from torch's for-loop in the last bit of a step, which the next steps carry
through the model: Adam/AdamW runs are compared at ``rtol=1e-6, atol=1e-7`` (they land within
~1.3e-7), RMSprop/Adagrad at 5x that (within ~1e-6), all far tighter than any real divergence.
bfloat16 parameters are compared with torch's fused kernel, which rounds once as pyfastopt does:
at most one bfloat16 ulp apart. A checkpoint resumed by the same implementation must land on
the uninterrupted run's parameters bit for bit.

Each framework's tests are skipped, with the reason shown, when it is not installed. Nothing is
downloaded: the models are built from configs (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

import pytest
import torch

import pyfastopt

TOL32 = {"rtol": 1e-6, "atol": 1e-7}

EXACT = {"rtol": 0.0, "atol": 0.0}
#: RMSprop and Adagrad divide by the root of accumulated squares, which magnifies the last-bit
#: differences that each step feeds back through the model: up to ~1e-6 relative after 6 steps
SQRT_TOL = {"rtol": 5e-6, "atol": 5e-7}

#: (name, keyword arguments, tolerance) of the optimizers each framework runs against torch's
#: class; SGD (momentum, Nesterov) follows torch's for-loop bit for bit
OPTIMIZERS = [
    pytest.param(
        "SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}, EXACT, id="SGD"
    ),
    pytest.param("Adam", {"lr": 1e-2}, TOL32, id="Adam"),
    pytest.param("AdamW", {"lr": 1e-2, "weight_decay": 0.1}, TOL32, id="AdamW"),
    pytest.param("RMSprop", {"lr": 1e-2, "momentum": 0.5}, SQRT_TOL, id="RMSprop"),
    pytest.param("Adagrad", {"lr": 0.1, "lr_decay": 1e-3}, SQRT_TOL, id="Adagrad"),
]

#: low-memory state options the checkpoint tests round-trip (the 8-bit one on every tensor)
STATE_OPTIONS = [
    pytest.param({}, id="torch-layout"),
    pytest.param({"state_dtype": torch.bfloat16}, id="bf16-state"),
    pytest.param({"state_dtype": "8bit", "min_8bit_size": 1}, id="8bit-state"),
]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """torch's own ops on one thread: on these tiny models two OpenMP threads only wait for
    each other (a forward and backward of ``Net`` take 0.25 ms on one thread and up to 50 ms
    on two of a busy 2-core machine). Both runs of a comparison use the same setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_opt(impl: str, name: str, params, **kw) -> torch.optim.Optimizer:
    """torch's for-loop optimizer or pyfastopt's, same arguments."""
    if impl == "torch":
        return getattr(torch.optim, name)(params, foreach=False, **kw)
    assert impl == "pyfastopt"
    return getattr(pyfastopt, name)(params, **kw)


def snapshot(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def assert_trained_alike(got, want, initial, **tol) -> None:
    """``got`` matches ``want`` parameter by parameter, and training moved them."""
    assert len(got) == len(want) == len(initial)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **(tol or TOL32))
    assert any(not torch.equal(w, i) for w, i in zip(want, initial)), "nothing was trained"


def assert_same_params(got, want) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert torch.equal(g, w), (g - w).abs().max().item()


def assert_within_one_ulp(got, want) -> None:
    """16-bit tensors bit-identical but for a few elements one unit in the last place apart."""
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.dtype in (torch.bfloat16, torch.float16)
        a, b = g.reshape(-1).view(torch.int16).int(), w.reshape(-1).view(torch.int16).int()
        diff = a != b
        if diff.any():
            assert (a - b).abs().max().item() <= 1, "more than one unit in the last place"
            assert diff.float().mean().item() <= 0.01, f"{int(diff.sum())}/{a.numel()} differ"


def data(n: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=gen), torch.randint(0, 2, (n,), generator=gen)


class Net(torch.nn.Module):
    """A classifier with decayed (weights) and undecayed (bias, LayerNorm) parameters; it
    returns what ``transformers.Trainer`` reads (``loss``) and records its logits' dtype (the
    autocast checks)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(8, 16)
        self.norm = torch.nn.LayerNorm(16)
        self.fc2 = torch.nn.Linear(16, 2)
        self.logits_dtype: torch.dtype | None = None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        h = torch.tanh(self.norm(self.fc1(x.to(self.fc1.weight.dtype))))
        logits = self.fc2(h)
        self.logits_dtype = logits.dtype
        out: dict[str, Any] = {"logits": logits}
        if labels is not None:
            # scaled up so that gradient clipping at the tests' thresholds does cut
            out["loss"] = 4 * torch.nn.functional.cross_entropy(logits.float(), labels)
        return out


# ---------------------------------------------------------------------------------------------
# Hugging Face transformers.Trainer (through accelerate's AcceleratedOptimizer)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def hf(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    return pytest.importorskip("transformers", reason="transformers is not installed")


class _HFData(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.x, self.y = data()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


def hf_args(hf, out: Path, **kw):
    base = {
        "output_dir": str(out),
        "max_steps": 6,
        "per_device_train_batch_size": 8,
        "learning_rate": 1e-2,
        "report_to": [],
        "disable_tqdm": True,
        "use_cpu": True,
        "dataloader_num_workers": 0,
        "save_strategy": "no",
        "logging_strategy": "no",
        "seed": 0,
    }
    base.update(kw)
    return hf.TrainingArguments(**base)


def hf_train(hf, impl, name, kw, out, model=None, resume=None, targs=None, schedule=True):
    """One Trainer run with ``optimizers=(optimizer, scheduler)``; returns (trainer, optimizer,
    initial parameters, final parameters)."""
    torch.manual_seed(0)
    model = Net() if model is None else model()
    initial = snapshot(model)
    opt = make_opt(impl, name, model.parameters(), **kw)
    targs = dict(targs or {})
    steps = targs.setdefault("max_steps", 6)
    sched = hf.get_linear_schedule_with_warmup(opt, 2, steps) if schedule else None
    trainer = hf.Trainer(
        model=model,
        args=hf_args(hf, out, **targs),
        train_dataset=_HFData(),
        optimizers=(opt, sched),
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer, opt, initial, snapshot(model)


@pytest.mark.parametrize("name,kw,tol", OPTIMIZERS)
def test_hf_trainer_matches_torch(hf, tmp_path, name, kw, tol):
    """``Trainer(optimizers=(opt, linear warmup))`` with gradient accumulation 2 and gradient
    clipping that cuts: pyfastopt's run is torch's."""
    targs = {
        "gradient_accumulation_steps": 2,
        "max_grad_norm": 0.5,
        "logging_strategy": "steps",
        "logging_steps": 1,
    }
    runs = {}
    for impl in ("torch", "pyfastopt"):
        runs[impl] = hf_train(hf, impl, name, kw, tmp_path / impl, targs=targs)
    (tr_t, opt_t, initial, want), (tr_f, opt_f, _, got) = runs["torch"], runs["pyfastopt"]
    assert tr_f.state.global_step == tr_t.state.global_step == 6
    assert tr_f.optimizer.optimizer is opt_f  # accelerate wrapped ours, did not replace it
    assert isinstance(opt_f, getattr(pyfastopt, name))
    norms = [h["grad_norm"] for h in tr_f.state.log_history if "grad_norm" in h]
    assert len(norms) == 6 and max(norms) > 0.5, norms  # clipping was on and did cut
    assert opt_f.param_groups[0]["lr"] == opt_t.param_groups[0]["lr"]  # the schedule ran alike
    assert_trained_alike(got, want, initial, **tol)


def test_hf_trainer_optimizer_cls_and_kwargs(hf, tmp_path):
    """``Trainer(optimizer_cls_and_kwargs=(pyfastopt.AdamW, {...}))``: the Trainer builds the
    optimizer itself (a decayed and an undecayed group) and its default linear schedule; a
    transformers model built from a config (tiny BERT)."""
    if "optimizer_cls_and_kwargs" not in inspect.signature(hf.Trainer.__init__).parameters:
        pytest.skip(f"transformers {hf.__version__} has no optimizer_cls_and_kwargs")
    config = hf.BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    gen = torch.Generator().manual_seed(0)
    ids, labels = torch.randint(0, 40, (32, 10), generator=gen), torch.randint(0, 2, (32,))

    class Tokens(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(ids)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"input_ids": ids[i], "labels": labels[i]}

    def run(cls, kwargs, out):
        torch.manual_seed(0)
        model = hf.AutoModelForSequenceClassification.from_config(config)
        # Softmax ignores a bias shared by every key, so the key biases' gradient is zero
        # up to rounding noise that Adam divides by ~eps: frozen, or runs that differ by
        # float32 rounding would differ there by far more.
        for name, p in model.named_parameters():
            if "attention.self.key.bias" in name:
                p.requires_grad_(False)
        initial = snapshot(model)
        args = hf_args(hf, out, weight_decay=0.1, warmup_steps=2, max_steps=6)
        trainer = hf.Trainer(
            model=model,
            args=args,
            train_dataset=Tokens(),
            optimizer_cls_and_kwargs=(cls, kwargs),
        )
        trainer.train()
        return trainer, initial, snapshot(model)

    _, initial, want = run(torch.optim.AdamW, {"foreach": False}, tmp_path / "torch")
    tr, _, got = run(pyfastopt.AdamW, {}, tmp_path / "pyfastopt")
    opt = tr.optimizer.optimizer
    assert isinstance(opt, pyfastopt.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert all(len(g["params"]) > 0 for g in opt.param_groups)
    assert_trained_alike(got, want, initial)


@pytest.mark.parametrize("options", STATE_OPTIONS)
def test_hf_trainer_resume_from_checkpoint(hf, tmp_path, options):
    """Train 8 steps saving at 4; a new Trainer resumed from checkpoint-4 (optimizer.pt loaded
    with ``weights_only=True`` into the AcceleratedOptimizer) lands on the same parameters."""
    kw = {"lr": 1e-2, "weight_decay": 0.1, **options}
    save = {"max_steps": 8, "save_strategy": "steps", "save_steps": 4}
    _, opt_full, _, full = hf_train(hf, "pyfastopt", "AdamW", kw, tmp_path, targs=save)
    ckpt = tmp_path / "checkpoint-4"
    assert (ckpt / "optimizer.pt").is_file()
    saved = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert saved["state"][0]["step"].item() == 4
    _, opt, _, resumed = hf_train(
        hf, "pyfastopt", "AdamW", kw, tmp_path / "resumed", resume=str(ckpt), targs={"max_steps": 8}
    )
    assert opt.state_dict()["state"][0]["step"].item() == 8
    assert opt.state_dict()["state"][0].keys() == opt_full.state_dict()["state"][0].keys()
    assert_same_params(resumed, full)


def test_hf_trainer_resumes_torch_checkpoint(hf, tmp_path):
    """Drop-in both ways: a checkpoint written by a torch.optim.AdamW run resumes into
    pyfastopt.AdamW, and the result is the uninterrupted torch run's."""
    kw = {"lr": 1e-2, "weight_decay": 0.1}
    save = {"max_steps": 8, "save_strategy": "steps", "save_steps": 4}
    _, _, initial, want = hf_train(hf, "torch", "AdamW", kw, tmp_path / "torch", targs=save)
    ckpt = tmp_path / "torch" / "checkpoint-4"
    _, opt, _, got = hf_train(
        hf, "pyfastopt", "AdamW", kw, tmp_path / "fast", resume=str(ckpt), targs={"max_steps": 8}
    )
    assert isinstance(opt, pyfastopt.AdamW)
    assert opt.state_dict()["state"][0]["step"].item() == 8
    assert_trained_alike(got, want, initial)


def test_hf_trainer_bf16_autocast(hf, tmp_path):
    """``bf16=True`` on the CPU: the forward runs under bfloat16 autocast, the parameters and
    the optimizer stay float32."""
    targs = {"bf16": True}
    try:
        hf_args(hf, tmp_path, **targs)
    except (ValueError, ImportError) as exc:  # pragma: no cover - depends on the version
        pytest.skip(f"Trainer refuses bf16 on the CPU: {exc}")
    runs = {
        impl: hf_train(hf, impl, "AdamW", {"lr": 1e-2}, tmp_path, targs=targs)
        for impl in ("torch", "pyfastopt")
    }
    (_, _, initial, want), (tr_f, _, _, got) = runs["torch"], runs["pyfastopt"]
    assert tr_f.accelerator.mixed_precision == "bf16"
    assert tr_f.model.logits_dtype == torch.bfloat16  # autocast was on
    assert all(p.dtype == torch.float32 for p in got)
    assert_trained_alike(got, want, initial)


def test_hf_trainer_bf16_parameters(hf, tmp_path):
    """A model held in bfloat16: pyfastopt.AdamW rounds once per value as torch's fused AdamW
    does (torch's for-loop rounds every intermediate: not a reference)."""
    kw = {"lr": 1e-2, "weight_decay": 0.1}
    bf16_model = lambda: Net().to(torch.bfloat16)  # noqa: E731
    torch.manual_seed(0)
    model = bf16_model()
    initial = snapshot(model)
    opt = torch.optim.AdamW(model.parameters(), fused=True, **kw)
    trainer = hf.Trainer(
        model=model, args=hf_args(hf, tmp_path), train_dataset=_HFData(), optimizers=(opt, None)
    )
    trainer.train()
    want = snapshot(model)
    _, opt_f, _, got = hf_train(
        hf, "pyfastopt", "AdamW", kw, tmp_path, model=bf16_model, schedule=False
    )
    assert opt_f.state[opt_f.param_groups[0]["params"][0]]["exp_avg"].dtype == torch.bfloat16
    assert any(not torch.equal(w, i) for w, i in zip(want, initial))
    assert_within_one_ulp(got, want)


# ---------------------------------------------------------------------------------------------
# PyTorch Lightning (lightning.Trainer, LightningOptimizer, Fabric)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def L(monkeypatch):
    lightning = pytest.importorskip("lightning", reason="lightning is not installed")
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # seed_everything sets it: restored afterwards
    return lightning


@functools.cache
def lightning_module_cls() -> type:
    """The LightningModule, defined once lightning is known to be importable."""
    import lightning as L

    class Module(L.LightningModule):
        """``make_opt(params)`` builds the optimizer; ``schedule``: configure_optimizers
        returns ``{"optimizer", "lr_scheduler"}`` (StepLR each step); ``manual``: manual
        optimization with gradient clipping; ``dtype``: the data's dtype (64-true)."""

        def __init__(self, make_opt, schedule=False, manual=False, dtype=torch.float32):
            super().__init__()
            self.net = Net()
            self.make_opt, self.schedule = make_opt, schedule
            self.automatic_optimization = not manual
            self.x, self.y = data(32)
            self.x = self.x.to(dtype)
            self.training_steps = 0

        def training_step(self, batch, batch_idx):
            self.training_steps += 1
            x, y = batch
            loss = self.net(x, y)["loss"]
            if self.automatic_optimization:
                return loss
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(loss)
            self.clip_gradients(opt, gradient_clip_val=0.5, gradient_clip_algorithm="norm")
            opt.step()
            if self.schedule:
                self.lr_schedulers().step()
            return None

        def configure_optimizers(self):
            opt = self.make_opt(self.parameters())
            if not self.schedule:
                return opt
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

        def train_dataloader(self):
            ds = torch.utils.data.TensorDataset(self.x, self.y)
            return torch.utils.data.DataLoader(ds, batch_size=8, shuffle=False, num_workers=0)

    return Module


def pl_trainer(L, root: Path, **kw):
    base = {
        "max_steps": 6,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": str(root),
    }
    base.update(kw)
    return L.Trainer(**base)


def pl_fit(L, root, make_opt, tkw=None, ckpt_path=None, **mkw):
    """One ``fit``; returns (trainer, module, initial parameters, final parameters)."""
    L.seed_everything(0, verbose=False)
    module = lightning_module_cls()(make_opt, **mkw)
    initial = snapshot(module)
    trainer = pl_trainer(L, root, **(tkw or {}))
    fit_kw: dict[str, Any] = {}
    if ckpt_path is not None:
        fit_kw["ckpt_path"] = str(ckpt_path)
        if "weights_only" in inspect.signature(trainer.fit).parameters:
            fit_kw["weights_only"] = True  # what a pyfastopt state_dict must survive
    trainer.fit(module, **fit_kw)
    return trainer, module, initial, snapshot(module)


def opt_factory(impl: str, name: str, **kw):
    return lambda params: make_opt(impl, name, params, **kw)


#: Lightning's own noise: tiny loaders in the main process, and its pytree helper's use of an
#: API torch deprecates
lightning_warnings = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers",
    "ignore:.*smaller than the logging interval",
    "ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated",
)


@lightning_warnings
@pytest.mark.parametrize("name,kw,tol", OPTIMIZERS)
def test_lightning_matches_torch(L, tmp_path, name, kw, tol):
    """Automatic optimization (Lightning hands ``step`` a closure that runs training_step and
    backward) with ``accumulate_grad_batches=2`` and ``gradient_clip_val``."""
    tkw = {"accumulate_grad_batches": 2, "gradient_clip_val": 0.5}
    tr_t, _, initial, want = pl_fit(L, tmp_path, opt_factory("torch", name, **kw), tkw)
    tr_f, mod_f, _, got = pl_fit(L, tmp_path, opt_factory("pyfastopt", name, **kw), tkw)
    assert tr_f.global_step == tr_t.global_step == 6
    assert mod_f.training_steps == 12  # every accumulated batch ran (the last ones in closures)
    assert type(tr_f.optimizers[0]) is getattr(pyfastopt, name)
    assert_trained_alike(got, want, initial, **tol)


@lightning_warnings
def test_lightning_step_gets_and_runs_the_closure(L, tmp_path):
    """Lightning calls ``optimizer.step(closure=...)``; a step pre-hook sees that call as under
    torch, and wrapping the closure in the hook shows pyfastopt runs it once per step."""
    seen: dict[str, list] = {}

    def make(impl):
        def build(params):
            opt = make_opt(impl, "Adam", params, lr=1e-2)
            calls = seen.setdefault(impl, [])

            def hook(o, args, kwargs):
                inner = kwargs["closure"]

                def counted():
                    calls.append(len(args))
                    return inner()

                return args, {**kwargs, "closure": counted}

            opt.register_step_pre_hook(hook)
            return opt

        return build

    _, _, initial, want = pl_fit(L, tmp_path, make("torch"))
    tr, _, _, got = pl_fit(L, tmp_path, make("pyfastopt"))
    assert seen["pyfastopt"] == seen["torch"] == [1] * 6  # args == (optimizer,), once a step
    assert tr.global_step == 6
    assert_trained_alike(got, want, initial)


@lightning_warnings
def test_lightning_scheduler_dict(L, tmp_path):
    """``configure_optimizers`` returning ``{"optimizer": ..., "lr_scheduler": ...}``."""
    kw = {"lr": 1e-2, "weight_decay": 0.1}
    tr_t, _, initial, want = pl_fit(L, tmp_path, opt_factory("torch", "AdamW", **kw), schedule=True)
    tr_f, _, _, got = pl_fit(L, tmp_path, opt_factory("pyfastopt", "AdamW", **kw), schedule=True)
    lr = tr_f.optimizers[0].param_groups[0]["lr"]
    assert lr == tr_t.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5**3)
    assert_trained_alike(got, want, initial)


@lightning_warnings
def test_lightning_manual_optimization(L, tmp_path):
    """``automatic_optimization = False``: ``self.optimizers()`` (a LightningOptimizer around
    ours), ``manual_backward``, ``clip_gradients``, ``opt.step()``, ``lr_schedulers().step()``."""
    kw = {"lr": 0.05, "momentum": 0.9}
    _, _, initial, want = pl_fit(
        L, tmp_path, opt_factory("torch", "SGD", **kw), manual=True, schedule=True
    )
    tr, _, _, got = pl_fit(
        L, tmp_path, opt_factory("pyfastopt", "SGD", **kw), manual=True, schedule=True
    )
    assert tr.global_step == 6
    assert isinstance(tr.optimizers[0], pyfastopt.SGD)
    assert_trained_alike(got, want, initial, **EXACT)


@lightning_warnings
@pytest.mark.parametrize("options", STATE_OPTIONS)
def test_lightning_checkpoint_resume(L, tmp_path, options):
    """``trainer.save_checkpoint`` after one epoch, then ``fit(ckpt_path=..., weights_only=True)``
    for the second: the uninterrupted two-epoch run's parameters, bit for bit."""
    make = opt_factory("pyfastopt", "AdamW", lr=1e-2, weight_decay=0.1, **options)
    epochs = {"max_steps": -1}
    _, _, _, full = pl_fit(L, tmp_path, make, {**epochs, "max_epochs": 2}, schedule=True)
    tr, _, _, _ = pl_fit(L, tmp_path, make, {**epochs, "max_epochs": 1}, schedule=True)
    ckpt = tmp_path / "epoch1.ckpt"
    tr.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)["optimizer_states"][0]
    assert saved["state"][0]["step"].item() == 4
    tr, _, _, resumed = pl_fit(
        L, tmp_path, make, {**epochs, "max_epochs": 2}, ckpt_path=ckpt, schedule=True
    )
    assert tr.global_step == 8
    assert tr.optimizers[0].state_dict()["state"][0]["step"].item() == 8
    assert_same_params(resumed, full)


@lightning_warnings
def test_lightning_lbfgs_closure(L, tmp_path):
    """LBFGS evaluates Lightning's closure several times a step (strong-Wolfe line search).
    float64 (``precision="64-true"``): in float32 this little problem amplifies rounding
    differences through the line search's branches, for torch's LBFGS against itself too."""
    kw = {"lr": 1, "max_iter": 4, "line_search_fn": "strong_wolfe"}
    tkw = {"precision": "64-true"}
    tr_t, _, initial, want = pl_fit(
        L, tmp_path, lambda p: torch.optim.LBFGS(p, **kw), tkw, dtype=torch.float64
    )
    tr_f, mod_f, _, got = pl_fit(
        L, tmp_path, lambda p: pyfastopt.LBFGS(p, **kw), tkw, dtype=torch.float64
    )
    assert all(p.dtype == torch.float64 for p in got)
    assert mod_f.training_steps > 6  # the closure ran more than once per step
    st_f = tr_f.optimizers[0].state_dict()["state"][0]
    st_t = tr_t.optimizers[0].state_dict()["state"][0]
    assert st_f["func_evals"] == st_t["func_evals"] and st_f["n_iter"] == st_t["n_iter"]
    assert_trained_alike(got, want, initial, rtol=1e-9, atol=1e-11)


@lightning_warnings
def test_lightning_bf16_mixed(L, tmp_path):
    """``precision="bf16-mixed"`` on the CPU: autocast forward, float32 parameters."""
    kw = {"lr": 1e-2, "weight_decay": 0.1}
    tkw = {"precision": "bf16-mixed", "gradient_clip_val": 0.5}
    _, _, initial, want = pl_fit(L, tmp_path, opt_factory("torch", "AdamW", **kw), tkw)
    _, mod, _, got = pl_fit(L, tmp_path, opt_factory("pyfastopt", "AdamW", **kw), tkw)
    assert mod.net.logits_dtype == torch.bfloat16  # autocast was on
    assert all(p.dtype == torch.float32 for p in got)
    assert_trained_alike(got, want, initial)


@lightning_warnings
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_lightning_bf16_true(L, tmp_path, name):
    """``precision="bf16-true"`` (bfloat16 parameters): pyfastopt against torch's fused kernel."""
    kw = {"lr": 1e-2, "weight_decay": 0.1}
    tkw = {"precision": "bf16-true"}
    fused = lambda p: getattr(torch.optim, name)(p, fused=True, **kw)  # noqa: E731
    _, _, initial, want = pl_fit(L, tmp_path, fused, tkw)
    _, _, _, got = pl_fit(L, tmp_path, opt_factory("pyfastopt", name, **kw), tkw)
    assert all(p.dtype == torch.bfloat16 for p in got)
    assert any(not torch.equal(w, i.to(torch.bfloat16)) for w, i in zip(want, initial))
    assert_within_one_ulp(got, want)


@lightning_warnings
def test_fabric(L, tmp_path):
    """``Fabric.setup`` wraps the optimizer (a FabricOptimizer around ours); ``backward``,
    ``clip_gradients``, ``step``; ``save`` and ``load`` restore its state exactly."""
    x, y = data(32)

    def run(impl):
        L.seed_everything(0, verbose=False)
        fabric = L.Fabric(accelerator="cpu", devices=1)
        model = Net()
        initial = snapshot(model)
        model, opt = fabric.setup(model, make_opt(impl, "AdamW", model.parameters(), lr=1e-2))
        for i in range(0, 32, 8):
            opt.zero_grad()
            fabric.backward(model(x[i : i + 8], y[i : i + 8])["loss"])
            fabric.clip_gradients(model, opt, max_norm=0.5)
            opt.step()
        return fabric, model, opt, initial, snapshot(model)

    _, _, _, initial, want = run("torch")
    fabric, model, opt, _, got = run("pyfastopt")
    assert isinstance(opt, pyfastopt.AdamW)
    assert_trained_alike(got, want, initial)
    fabric.save(tmp_path / "fabric.ckpt", {"model": model, "optimizer": opt})
    other = Net()
    other_model, other_opt = fabric.setup(other, pyfastopt.AdamW(other.parameters(), lr=1e-2))
    fabric.load(tmp_path / "fabric.ckpt", {"model": other_model, "optimizer": other_opt})
    assert_same_params(snapshot(other), got)
    a, b = opt.state_dict()["state"], other_opt.state_dict()["state"]
    assert a.keys() == b.keys() and len(a) == len(got)
    for k in a:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(a[k][key], b[k][key]), (k, key)
