import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import free_port, make_bert, make_dataset, make_sentences, train_wordpiece_tokenizer
from transformers import DataCollatorWithPadding

from trainer_ext.training.teacher_logits import compute_teacher_logits

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "ddp_distill.py")


@pytest.mark.distributed
def test_torchrun_two_processes_share_the_teacher_work(tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), SCRIPT, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # Each rank ran the teacher on its own half of the 50 examples, not on all of them.
    assert [r["cache_examples"] for r in ranks] == [25, 25]
    # 50 examples, batch 4 per process, 2 processes, 2 epochs: 7 optimizer steps per epoch.
    assert [r["global_step"] for r in ranks] == [14, 14]
    # The hidden-state projection lives outside DDP; its gradients are averaged by hand, so the ranks agree.
    assert ranks[0]["projection_sum"] == pytest.approx(ranks[1]["projection_sum"], abs=1e-6)
    # The pooled projection is fitted to each rank's first batch: rank 0's fit is broadcast, so they agree too.
    assert ranks[0]["pooled_projection_sum"] == pytest.approx(ranks[1]["pooled_projection_sum"], abs=1e-6)

    # Every rank ends with the full logits, equal to a single-process computation.
    tokenizer = train_wordpiece_tokenizer(make_sentences(400, seed=1)[0])
    data = make_dataset(tokenizer, n=50)
    teacher = make_bert(tokenizer, hidden_size=48, num_hidden_layers=3, seed=1)
    single = compute_teacher_logits(teacher, data, batch_size=8, collate=DataCollatorWithPadding(tokenizer))
    for r in (0, 1):
        gathered = np.load(tmp_path / f"logits_rank{r}.npy")
        assert gathered.shape == single.shape == (50, 2)
        # Batches differ between the runs, so padding lengths do too: ~1e-5 float noise, nothing more.
        assert np.allclose(gathered, single, atol=1e-4)
    assert len([f for f in os.listdir(tmp_path / "_teacher_logits") if f.endswith(".npy")]) == 1
