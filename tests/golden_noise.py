"""How far this CPU's float32 arithmetic moves the model from the golden fixtures, per quantity.

The golden tolerances (``tests/golden.py``) must cover the last-place noise of float32 on any CPU
(other SIMD widths and GEMM kernels round differently) while staying tight enough to catch a real
mistake. This script measures that noise here and under settings that make this CPU take the
code paths of other CPUs: ATen's kernels without AVX2 (``ATEN_CPU_CAPABILITY=default``), MKL's
GEMMs in their conditional-reproducibility modes (``MKL_CBWR``), oneDNN limited to SSE4.1, and two
threads instead of the tests' one. Each setting runs in its own process; the table shows, per
quantity, the largest ``|ours - golden| / (atol + rtol * |golden|)`` (the test fails above 1.0)
and the largest absolute gap.

    python tests/golden_noise.py            # all settings (about a minute)
    python tests/golden_noise.py --here     # this process's settings only
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SETTINGS = {
    "as is": {},
    "2 threads": {"GOLDEN_NOISE_THREADS": "2"},
    "ATen without AVX2": {"ATEN_CPU_CAPABILITY": "default"},
    "MKL compatible": {"MKL_CBWR": "COMPATIBLE"},
    "MKL AVX": {"MKL_CBWR": "AVX"},
    "oneDNN SSE4.1": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "all of the above": {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE",
                         "ONEDNN_MAX_CPU_ISA": "SSE41", "GOLDEN_NOISE_THREADS": "2"},
}


def measure_here() -> dict:
    """``{quantity: (worst ratio to tolerance, worst absolute gap)}`` for this process."""
    sys.path.insert(0, ROOT)
    import torch

    torch.set_num_threads(int(os.environ.get("GOLDEN_NOISE_THREADS", "1")))
    from tests import golden as g

    worst: dict = {}

    def note(quantity, got, want, mask=None):
        ratio, gap = g.excess(got, want, quantity, mask)
        old = worst.get(quantity, (0.0, 0.0))
        worst[quantity] = (max(old[0], ratio), max(old[1], gap))

    for variant in g.VARIANTS:
        want = g.golden(variant, "outputs_eval.pt")
        model = g.build(variant)
        rec = g.record_intermediates(model)
        with torch.no_grad():
            heads = model.forward_heads(g.batch_for(model, g.inputs(variant)))
        note("features", rec["txt_embd"][0], want["txt_embd"])
        note("features", rec["vid_embd"][0], want["vid_embd"])
        for name in ("txt_stem", "vid_stem", "branch"):
            for i, ref in enumerate(want[name]):
                note("features", rec[name][i], ref)
        for got, ref in zip(rec["fpn"][0], want["fpn_feats"]):
            note("features", got, ref)
        with torch.no_grad():
            runs = [(model(g.inputs(variant)), want["results"])]
        for got, ref in zip(g.channel_first(heads.cls_logits), want["cls_logits"]):
            note("cls_logits", got, ref)
        for got, ref in zip(g.channel_first(heads.offsets), want["offsets"]):
            note("offsets", got, ref)
        for ours, ref in zip(g.candidates_of(model, heads), want["pre_nms"]):
            rows = g.match_rows(ours, ref, "pre_nms_segments", "pre_nms_scores", scale=100.0)
            note("pre_nms_segments", ours["segments"][rows[0]], ref["segments"][rows[1]])
            note("pre_nms_scores", ours["scores"][rows[0]], ref["scores"][rows[1]])

        variants = g.golden(variant, "outputs_eval_variants.pt")
        test_cfg = g.golden(variant, "config.json")["model"]["test_cfg"]
        for name in variants:
            other = g.build(variant, test_cfg={**test_cfg, **variants[name]["test_cfg_overrides"]})
            with torch.no_grad():
                runs.append((other(g.inputs(variant)), variants[name]["results"]))
        for item, ref in zip(g.inputs(variant), g.golden(variant, "outputs_eval_single.pt")["per_query"]):
            with torch.no_grad():
                alone = model.forward_heads(g.batch_for(model, [item]))
                runs.append((model([item]), [ref["results"]]))
            for got, ref_level in zip(g.channel_first(alone.cls_logits), ref["cls_logits"]):
                note("cls_logits", got, ref_level)
        exact = g.build(variant, video_pad_mode="exact")
        with torch.no_grad():
            heads = exact.forward_heads(g.batch_for(exact, g.inputs(variant)))
            runs.append((exact(g.inputs(variant)), want["results"]))
        for level, mask in enumerate(heads.fpn_masks):
            ref = want["cls_logits"][level][:, 0, :mask.shape[1]]
            note("cls_logits", heads.cls_logits[level][..., 0], ref, mask)
        for ours_list, ref_list in runs:
            for ours, ref in zip(ours_list, ref_list):
                rows = g.match_rows(ours, ref, "result_segments", "result_scores", scale=100.0)
                note("result_segments", ours["segments"][rows[0]], ref["segments"][rows[1]])
                note("result_scores", ours["scores"][rows[0]], ref["scores"][rows[1]])

        model.train()
        model.set_drop_path(0.0)
        losses = model(g.inputs(variant))
        train = g.golden(variant, "outputs_train.pt")
        for key in ("cls_loss", "reg_loss", "final_loss"):
            note("losses", losses[key].detach(), train["losses"][key])
        losses["final_loss"].backward()
        grads = g.golden(variant, "grads_train.pt")
        for name, param in model.named_parameters():
            note("gradients", param.grad, grads[name])
    return worst


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--here", action="store_true", help="measure this process's settings only")
    args = parser.parse_args(argv)
    if args.here:
        print(json.dumps(measure_here()))
        return
    table = {}
    for name, env in SETTINGS.items():
        out = subprocess.run([sys.executable, __file__, "--here"], env={**os.environ, **env},
                             capture_output=True, text=True, check=True).stdout
        table[name] = json.loads(out.strip().splitlines()[-1])
    quantities = list(next(iter(table.values())))
    print("worst |ours - golden| / tolerance (absolute gap), per quantity and setting")
    print("| quantity | " + " | ".join(table) + " |")
    print("|---" * (len(table) + 1) + "|")
    for quantity in quantities:
        cells = [f"{table[s][quantity][0]:.2f} ({table[s][quantity][1]:.1e})" for s in table]
        print(f"| {quantity} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
