"""The model and the trainer on a CUDA device (skipped without one): the golden GroundNLQ fixtures
in float32, bf16 autocast, and AMP training steps. Nothing in the model names a device, so these
run the same code as the CPU tests; what differs is the kernels (cuBLAS / cuDNN reductions,
SDPA backends, the NMS kernel), hence tolerances CUDA_SCALE times the CPU parity tests' (the
quantity table in tests/golden.py); the scale is a first guess until a GPU run sets it.

For a GPU machine without ``../shared``: copy ``../shared/golden`` into the checkout and point
``GROUNDNLQ_SHARED`` at the copy's parent (``bench/gpu_check.sh`` does).
"""
import pytest
import torch
from torch.utils.data import DataLoader

from libs.engine.trainer import HookBase, SimpleTrainer
from libs.utils.lr_schedule import make_scheduler
from libs.utils.optim import make_optimizer
from tests.golden import VARIANTS, assert_same_results, batch_for, build, channel_first, golden, inputs
from tests.modeling.test_meta_arch_golden import (
    assert_grads_match,
    assert_heads_match_at_valid_positions,
    assert_losses_match,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")
# the CPU tolerances of tests/golden.py times this: a first guess, to be set from a GPU run
CUDA_SCALE = 10.0


@pytest.fixture(autouse=True)
def no_tf32():
    """TF32 matmuls and convolutions carry 10-bit mantissas: float32 parity needs them off."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("video_pad_mode", ["reference", "exact"])
def test_golden_heads_and_results_on_cuda(variant, video_pad_mode):
    want = golden(variant, "outputs_eval.pt")
    model = build(variant, video_pad_mode=video_pad_mode).to(CUDA)
    with torch.no_grad():
        heads = model.forward_heads(batch_for(model, inputs(variant)))
        results = model(inputs(variant))
    assert heads.cls_logits[0].device.type == "cuda"
    assert_heads_match_at_valid_positions(heads, want, scale=CUDA_SCALE)
    assert_same_results(results, want["results"], scale=CUDA_SCALE)


@pytest.mark.parametrize("variant", VARIANTS)
def test_golden_losses_and_gradients_on_cuda(variant):
    want = golden(variant, "outputs_train.pt")
    grads = golden(variant, "grads_train.pt")
    model = build(variant).to(CUDA)
    model.set_drop_path(0.0)
    model.train()
    losses = model(inputs(variant))
    assert_losses_match(losses, want, scale=CUDA_SCALE)
    losses["final_loss"].backward()
    assert_grads_match(model, grads, scale=CUDA_SCALE)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_inference_on_cuda_stays_close(dtype):
    want = golden("tiny_model", "outputs_eval.pt")
    model = build("tiny_model").to(CUDA)
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
        heads = model.forward_heads(batch_for(model, inputs("tiny_model")))
        results = model(inputs("tiny_model"))
    for got, ref in zip(channel_first(heads.cls_logits), want["cls_logits"]):
        assert got.shape == ref.shape and (got.float().cpu() - ref).abs().max() < 0.1
    assert all(torch.isfinite(r["scores"]).all() and r["scores"].numel() > 0 for r in results)


class StepRecorder(HookBase):
    def __init__(self):
        self.steps = []

    def after_step(self):
        storage = self.trainer.storage
        self.steps.append((storage.history("final_loss").latest(), storage.history("grad_norm").latest(),
                           self.trainer.step_skipped))


@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_trainer_steps_on_cuda(amp):
    """Two optimiser steps of the tiny model through SimpleTrainer: the parameters stay on the
    GPU, the first loss is near the float32 reference (AMP: within 2%), losses stay finite, and
    only fp16's scaler may skip a step (an overflow while it calibrates)."""
    want = golden("tiny_model", "outputs_train.pt")
    model = build("tiny_model").to(CUDA)
    model.set_drop_path(0.0)
    opt_cfg = {"type": "AdamW", "learning_rate": 1e-4, "weight_decay": 0.05, "epochs": 1, "warmup": False,
               "warmup_epochs": 0, "schedule_type": "cosine"}
    loader = DataLoader(inputs("tiny_model") * 2, batch_size=3, shuffle=False, collate_fn=model.collator(is_training=True))
    optimizer = make_optimizer(model, opt_cfg)
    trainer = SimpleTrainer(model, loader, optimizer, make_scheduler(optimizer, opt_cfg, len(loader)),
                            device=CUDA, clip_grad_l2norm=1.0, amp=amp)
    recorder = StepRecorder()
    trainer.register_hooks([recorder])
    trainer.train(0, 1)
    assert len(recorder.steps) == 2
    rel = 1e-5 if amp == "none" else 2e-2
    assert recorder.steps[0][0] == pytest.approx(want["losses"]["final_loss"].item(), rel=rel)
    for loss, grad_norm, skipped in recorder.steps:
        assert torch.isfinite(torch.tensor(loss))
        assert amp == "fp16" or (not skipped and torch.isfinite(torch.tensor(grad_norm)))
    assert all(p.device.type == "cuda" for p in model.parameters())
