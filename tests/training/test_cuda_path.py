"""What a first GPU run would hit, caught on a CPU: no host reads or CPU-to-device copies per step, no graph break
for torch.compile, evaluation sharded over DDP ranks, one process per GPU, skipped steps that leave every buffer as
it was (fp16 overflow included), one mixed-precision rule, and the trainer's step under bf16 autocast."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hiertree.config import load_config
from hiertree.device import resolve_amp
from hiertree.losses import HierarchicalLoss
from hiertree.models import HierSegModel
from hiertree.training import distributed, engine
from hiertree.training.run_state import TrainingError
from tiny import DEMO, TINY_RUN

#: every loss option the trainer can switch on, as config overrides of the loss section
LOSS_OPTIONS = {
    "default": {},
    "tree_min": {"tree_min_weight": 0.5},
    "label_smoothing": {"label_smoothing": 0.1},
    "class_weights": {"class_weights": [[1.0, 2.0], [1.0, 2.0, 3.0], [1.0] * 7]},
    "pseudo_labels": {"partial_pseudo_weight": 1.0, "partial_pseudo_threshold": 0.5},
}
#: mask values of a synthetic run mapped so that some pixels are labelled at inner nodes (partial labels)
PARTIAL = "data.labels={0: background, 1: upper_body, 2: torso, 3: lower_body, 4: head, 5: lower_body, 6: body}"


class _DeviceTraffic(TorchDispatchMode):
    """Counts host reads of tensor values and copies from the CPU to another device: each is a wait on a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.reads, self.copies = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default):
            self.reads += 1
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            tensors = [a for a in (*args, *(kwargs or {}).values()) if isinstance(a, torch.Tensor)]
            target = (kwargs or {}).get("device")
            devices = {t.device.type for t in tensors} | ({torch.device(target).type} if target else set())
            if "cpu" in devices and len(devices) > 1:
                self.copies += 1
        return func(*args, **(kwargs or {}))


def _meta_inputs(pascal, size=(2, 16, 16), partial=False):
    logits = [torch.randn(size[0], n, *size[1:], device="meta") for n in pascal.level_sizes]
    top = pascal.num_nodes if partial else pascal.num_leaves
    mask = torch.randint(0, top, size).to("meta")
    return logits, mask


@pytest.mark.parametrize("option", list(LOSS_OPTIONS))
@pytest.mark.parametrize("partial", [False, True])
def test_the_loss_reads_nothing_back_and_copies_its_tables_once(pascal, option, partial):
    """On the meta device any host read raises; a copy of a CPU table to the device is counted: after the first
    call (the tables' one copy), none. Logits at the decoder's stride (smaller than the mask) included."""
    loss = HierarchicalLoss(pascal, **LOSS_OPTIONS[option]).to("meta")
    loss.check_targets = False  # as the trainer runs it: SegDataset checked the masks
    logits, mask = _meta_inputs(pascal, partial=partial)
    small = [z[..., ::4, ::4] for z in logits]
    loss(logits, mask, partial=partial)  # first call: the taxonomy's tables move to the device once
    for z in (logits, small):
        with _DeviceTraffic() as traffic:
            total, _ = loss(z, mask, partial=partial)
        assert (traffic.reads, traffic.copies) == (0, 0), (option, partial)
        assert total.device.type == "meta"


@pytest.mark.parametrize("flat", [False, True])
def test_the_model_reads_nothing_back_and_copies_nothing(pascal, flat):
    model = HierSegModel(pascal, decoder_channels=16, skip_channels=8, flat=flat).to("meta")
    x = torch.empty(2, 3, 64, 64, device="meta")
    model(x)
    with _DeviceTraffic() as traffic:
        logits = model(x, upsample=False)
    assert (traffic.reads, traffic.copies) == (0, 0) and logits[0].device.type == "meta"


def test_the_counter_sees_reads_and_copies():
    with _DeviceTraffic() as traffic:
        torch.ones(3).to("meta")
        torch.ones(3).nonzero()
        bool(torch.ones(()) > 0)
    assert traffic.copies == 1 and traffic.reads == 2


# ---------------------------------------------------------------------- torch.compile
@pytest.mark.parametrize("flat", [False, True])
def test_no_graph_break_in_the_model_or_the_loss(pascal, flat):
    torch._dynamo.reset()
    model = HierSegModel(pascal, decoder_channels=16, skip_channels=8, flat=flat).train()
    x = torch.rand(2, 3, 64, 64) * 255
    explained = torch._dynamo.explain(model)(x, upsample=False)
    assert explained.graph_break_count == 0, explained.break_reasons
    loss = HierarchicalLoss(pascal, tree_min_weight=0.5)
    loss.check_targets = False
    logits = [z.detach() for z in model(x)]
    mask = torch.randint(0, pascal.num_leaves, (2, 64, 64))
    explained = torch._dynamo.explain(loss)(logits, mask, partial=False)
    assert explained.graph_break_count == 0, explained.break_reasons


def test_one_compiled_training_step_on_the_cpu(tmp_path):
    torch._dynamo.reset()
    cfg = load_config(DEMO, [*TINY_RUN, "train.compile=true", f"train.out_dir={tmp_path}"])
    run = engine._setup(cfg, "", None)
    engine._resume(run)
    run.forward = torch.compile(run.model, backend="aot_eager")
    before = [p.detach().clone() for p in run.model.parameters()]
    window = engine._Window()
    engine._step(run, next(iter(run.data.train_loader)), window, 1)
    assert torch.isfinite(window.losses[0]) and float(window.bad[0]) == 0.0
    assert any(not torch.equal(a, p) for a, p in zip(before, run.model.parameters()))


# ---------------------------------------------------------------------- processes and GPUs
def test_more_processes_than_gpus_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    distributed.check_gpus(0)  # rank 0 has its GPU
    with pytest.raises(TrainingError, match=r"torchrun started 2 processes on this machine but it has 1 CUDA "
                                            r"device\(s\): local rank 1 has none; run `torchrun --nproc_per_node 1"):
        distributed.check_gpus(1)


# ---------------------------------------------------------------------- skipped steps
def _run(tmp_path, *extra):
    run = engine._setup(load_config(DEMO, [*TINY_RUN, *extra, f"train.out_dir={tmp_path}"]), "", None)
    engine._resume(run)
    return run


def test_a_skipped_step_leaves_every_buffer_as_it_was(tmp_path, monkeypatch):
    run = _run(tmp_path)
    batch, window = next(iter(run.data.train_loader)), engine._Window()
    engine._step(run, batch, window, 1)
    buffers = {k: v.clone() for k, v in run.model.state_dict().items() if "running" in k or "num_batches" in k}
    assert buffers
    real = run.optim.criterion.forward
    monkeypatch.setattr(run.optim.criterion, "forward",
                        lambda *a, **k: (lambda t, parts: (t * float("nan"), parts))(*real(*a, **k)))
    engine._step(run, batch, window, 2)
    after = run.model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in buffers.items())  # the forward moved them; the skip put them back
    monkeypatch.undo()
    engine._step(run, batch, window, 3)
    assert any(not torch.equal(v, run.model.state_dict()[k]) for k, v in buffers.items())  # a good step moves them


def test_an_fp16_step_the_scaler_skips_counts_as_skipped():
    """GradScaler skips a step whose gradients overflow (its scale goes down): that step is bad, not good."""
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(model.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=2.0 ** 16)
    run = types.SimpleNamespace(model=model, opts=types.SimpleNamespace(train=types.SimpleNamespace(grad_clip=None)),
                                optim=types.SimpleNamespace(optimizer=optimizer, scaler=scaler, fused=False))
    weights = model.weight.detach().clone()
    scaler.scale(model(torch.full((1, 2), 3e38)).sum()).backward()  # finite loss, overflowing gradients
    bad = engine._optimizer_step(run, torch.zeros(()))
    assert float(bad) == 1.0 and torch.equal(weights, model.weight)
    optimizer.zero_grad()
    scaler.scale(model(torch.ones(1, 2)).sum()).backward()
    assert float(engine._optimizer_step(run, torch.zeros(()))) == 0.0 and not torch.equal(weights, model.weight)


# ---------------------------------------------------------------------- precision
def test_amp_auto_is_one_rule(monkeypatch):
    cuda = torch.device("cuda")
    assert resolve_amp("auto", torch.device("cpu")) == "none" and resolve_amp("fp32", cuda) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_amp("auto", cuda) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert resolve_amp("auto", cuda) == "fp16"  # a card without bf16: fp16 with a gradient scaler, not emulation


@pytest.mark.parametrize("setting", [[], ["loss.tree_min_weight=0.5"], ["model.flat=true"], [PARTIAL],
                                     ["loss.full_resolution=false"]],
                         ids=["default", "tree_min", "flat", "partial_labels", "loss_at_decoder_stride"])
def test_the_trainer_step_under_bf16_autocast(tmp_path, setting):
    run = _run(tmp_path, "train.amp=bf16", *setting)
    assert run.place.amp == "bf16"
    before = copy.deepcopy(run.model.state_dict())
    window = engine._Window()
    for k, batch in zip(range(2), run.data.train_loader):
        engine._step(run, batch, window, k + 1)
    assert all(torch.isfinite(loss) for loss in window.losses) and [float(b) for b in window.bad] == [0.0, 0.0]
    assert all(p.dtype == torch.float32 for p in run.model.parameters())
    assert any(not torch.equal(v, run.model.state_dict()[k]) for k, v in before.items() if v.is_floating_point())


def test_the_sync_check_runs_every_loss_setting(capsys):
    """lease.sh gpu-check's second half (issue 28): the trainer's steps per loss setting, here on the CPU where
    set_sync_debug_mode checks nothing, so that the first GPU only has to run it."""
    from benchmarks.gpu.sync_check import SETTINGS, main

    assert main(["--steps", "1", "data.synthetic.num_train=8", "data.synthetic.num_val=2", "data.crop=64",
                 "data.synthetic.size=64", "model.decoder_channels=16", "train.device=cpu"]) == 0
    printed = capsys.readouterr().out
    assert all(f"{name}: 1 steps on cpu" in printed for name in SETTINGS)
