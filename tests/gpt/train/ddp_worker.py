"""Run under torchrun by test_distributed.py: train, then save this rank's weights.

    ddp_worker.py OUT_DIR MODE 'TRAIN OPTIONS AS JSON'
    MODE: sampled|fixed|resume|stop-on-rank-1|stop-at-once|resume-stop-at-once|overfit|die-while-saving

'fixed' replaces the batch sampler with rows of one shared batch of 16 sequences: rank r
of N gets rows [r*b, (r+1)*b) (split further by micro-step under gradient accumulation),
so N ranks at batch b see exactly the examples that one process sees at batch N*b.
'resume' continues the run in the options' "out" folder. 'stop-on-rank-1': only rank 1 asks
the run to stop, after step 5; 'stop-at-once': every rank, before the first step (and
'resume-stop-at-once' after resuming: the checkpoint is written again as this run holds it).
'die-while-saving': rank 0 exits in its second checkpoint's save (a --fsdp run), after
every rank wrote its part and before the new part is put in place. 'overfit': the val loss is made
to fall to step 8, then rise.
"""
import json
import os
import sys
from pathlib import Path

import torch

from gpt.train import batches, train

out, mode, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
rank = int(os.environ.get("RANK", 0))

if mode == "fixed":
    shared = torch.randint(0, 20, (16, options["block_size"] + 1), generator=torch.Generator().manual_seed(0))
    accum, calls = options.get("grad_accum", 1), [0]

    def fixed_next(self):
        block = rank * accum + calls[0] % accum  # this rank's micro-step k takes its own rows
        calls[0] += 1
        mine = shared[block * self.batch_size : (block + 1) * self.batch_size]
        return mine[:, :-1], mine[:, 1:]

    batches.BatchSampler.next = fixed_next

if mode == "overfit":  # val falls to step 8, then rises: patience runs out on every rank alike
    from gpt.train.trainer import Trainer

    Trainer.evaluate = lambda self: 3.0 - 0.1 * min(self.step, 8) + 0.1 * max(self.step - 8, 0)

if mode == "die-while-saving":  # rank 0 dies at the second save, after every rank wrote its shards
    from gpt.store import sharded

    settle, saves = sharded.settle, [0]

    def dying_settle(*args):
        saves[0] += 1
        if saves[0] == 2:
            os._exit(9)
        return settle(*args)

    sharded.settle = dying_settle

should_stop = {"stop-on-rank-1": lambda step: rank == 1 and step == 5, "stop-at-once": lambda step: True,
               "resume-stop-at-once": lambda step: True}.get(mode)
result = train(overrides=options, resume=mode.startswith("resume"), should_stop=should_stop, log=lambda s: None)
Path(out).mkdir(parents=True, exist_ok=True)
if result.model is not None:  # under --fsdp, rank 0 alone hands back the whole model
    torch.save({k: v.detach().cpu() for k, v in result.model.state_dict().items()}, Path(out) / f"rank{rank}.pt")
(Path(out) / f"rank{rank}.losses").write_text(json.dumps([v for _, v in result.history]))
