"""Building a trainer's DeepSpeed engine stays cheap: neither MLflow nor torch inductor's
compiler is imported on the way."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow  # DeepSpeed in two fresh processes (~15 s)


def test_building_an_engine_imports_neither_mlflow_nor_the_inductor_compiler(tiny_model_dir):
    """DeepSpeed's autotuner imports MLflow when installed, and its ZeRO-2 code imports its Muon
    optimiser, whose module would torch.compile kernels and so import torch._inductor.compile_fx
    (each 5-15 s in every trainer process here, for features rayrlhf never uses).
    Fresh processes (this one may have imported both already) build a real ZeRO-2 engine on 2
    gloo ranks, take an AdamW step (the gradient all-reduce is where ZeRO-2 looks for Muon) and
    report what they imported."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = textwrap.dedent(f"""
        import sys
        import torch
        from transformers import AutoModelForCausalLM
        from rayrlhf.workers.base import DistributedWorker, OptimConfig, build_engine

        rank = int(sys.argv[1])
        DistributedWorker().setup_distributed(rank, 2, "127.0.0.1", {port})
        model = AutoModelForCausalLM.from_pretrained({tiny_model_dir!r}, dtype=torch.float32)
        engine = build_engine(model, OptimConfig(lr=1e-2, zero_stage=2, bf16=False, micro_batch_size=1), "float32")
        before = {{n: p.detach().clone() for n, p in model.named_parameters()}}
        ids = torch.tensor([[5 + rank, 6, 7, 8]])
        engine.backward(engine(input_ids=ids, labels=ids).loss)
        engine.step()
        moved = any(not torch.equal(before[n], p) for n, p in model.named_parameters())
        print(type(engine.optimizer).__name__, "torch._inductor.compile_fx" in sys.modules, "mlflow" in sys.modules,
              moved)
    """)
    ranks = [subprocess.Popen([sys.executable, "-c", script, str(rank)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    for proc in ranks:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        optimizer, inductor, mlflow, moved = out.split()[-4:]
        assert optimizer == "DeepSpeedZeroOptimizer"  # ZeRO-2 took AdamW
        assert (inductor, mlflow, moved) == ("False", "False", "True")
