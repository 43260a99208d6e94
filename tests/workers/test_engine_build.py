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


def test_one_fp32_rank_runs_plain_adamw_and_takes_zero2s_step(tiny_model_dir):
    """ZeRO-2 on one rank shards nothing but keeps a second flat copy of the weights, so one fp32
    rank runs stage 0 (plain AdamW); the weights after two accumulated steps must be ZeRO-2's.
    ZeRO-2 itself is built here through deepspeed_config, as on two or more ranks."""
    script = textwrap.dedent(f"""
        import socket
        import torch
        from transformers import AutoModelForCausalLM
        import rayrlhf.workers.base as base
        from rayrlhf.workers.base import DistributedWorker, OptimConfig, build_engine, effective_zero_stage

        assert effective_zero_stage(2, 1, bf16=False) == 0 and effective_zero_stage(1, 1, bf16=False) == 0
        assert effective_zero_stage(2, 2, bf16=False) == 2 and effective_zero_stage(2, 1, bf16=True) == 2
        assert effective_zero_stage(3, 1, bf16=False) == 3
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        DistributedWorker().setup_distributed(0, 1, "127.0.0.1", port)

        def trained(force_stage):
            if force_stage is not None:
                base.effective_zero_stage = lambda stage, world, bf16: force_stage
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_pretrained({tiny_model_dir!r}, dtype=torch.float32)
            engine = build_engine(model, OptimConfig(lr=1e-2, zero_stage=2, bf16=False, micro_batch_size=1,
                                                     caller_accumulates=True), "float32")
            for _ in range(2):
                for k in range(3):
                    ids = torch.tensor([[5 + k, 6, 7, 8]])
                    engine.backward(engine(input_ids=ids, labels=ids).loss / 3)
                engine.step()
            return type(engine.optimizer).__name__, {{n: p.detach().clone() for n, p in model.named_parameters()}}

        plain_name, plain = trained(None)
        zero2_name, zero2 = trained(2)
        start = AutoModelForCausalLM.from_pretrained({tiny_model_dir!r}, dtype=torch.float32).state_dict()
        assert plain_name == "AdamW" and zero2_name == "DeepSpeedZeroOptimizer", (plain_name, zero2_name)
        assert any(not torch.equal(plain[n], start[n]) for n in plain)
        worst = max(float((plain[n] - zero2[n]).abs().max()) for n in plain)
        assert worst < 1e-5, worst
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == "ok"
