"""Every collective helper of mnist_ddp on a one-rank NCCL group (run by benchmarks/gpu_check.py on a GPU).

One rank is all one GPU allows NCCL: the results are trivial sums, but every call goes through
NCCL on CUDA tensors, as a multi-GPU job's do: all_reduce (sum, max), barrier, broadcast of an
object, all_gather, failing together, exact evaluation, the guard's lagged and immediate checks,
the ranks' agreement (an object gather), and a DDP step whose wait for gradients is timed with
CUDA events.
"""

import socket
from datetime import timedelta

import torch
import torch.distributed as dist

from mnist_ddp.base.errors import InputError
from mnist_ddp.config.schema import DistConfig
from mnist_ddp.model.evaluation import evaluate_across_ranks
from mnist_ddp.model.mlp import MLP
from mnist_ddp.observe.timing import RankClock
from mnist_ddp.parallel import agreement, ddp, distributed
from mnist_ddp.training import guard

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
device = torch.device("cuda", 0)
torch.cuda.set_device(device)
store = dist.TCPStore("127.0.0.1", port, 1, is_master=True, timeout=timedelta(seconds=60))
dist.init_process_group("nccl", store=store, rank=0, world_size=1, device_id=device)
t = torch.tensor([1.0, 2.0], device=device)
assert distributed.all_reduce_sum(t.clone()).tolist() == [1.0, 2.0]
assert distributed.all_reduce_max(t.clone()).tolist() == [1.0, 2.0]
distributed.barrier()
assert distributed.broadcast_from_rank0({"step": 3}) == {"step": 3}
assert [x.tolist() for x in distributed.all_gather_tensors(t)] == [[1.0, 2.0]]
with distributed.fail_together(device):
    pass
try:
    with distributed.fail_together(device):
        raise InputError("expected")
    raise AssertionError("fail_together swallowed the error")
except InputError:
    pass
torch.manual_seed(0)
model = MLP(64, [16], 0.5).to(device)
images = torch.randint(0, 256, (37, 64), dtype=torch.uint8, device=device)
labels = torch.randint(0, 10, (37,), device=device)
assert evaluate_across_ranks(model, images, labels, 8, 0, 1).examples == 37
stop_guard = guard.StopGuard(model, device)
stop_guard.record(torch.tensor(float("nan"), device=device))
assert stop_guard.lagged(10) == guard.Decision(False, None)
assert stop_guard.lagged(20).first_bad_step == 0
assert stop_guard.now(30).first_bad_step == 0
assert agreement.check_ranks_agree({"train.lr": "0.1"}) == [socket.gethostname()]
clock = RankClock(device, enabled=True)
ddp = ddp.wrap_ddp(model, device, DistConfig())
clock.watch_gradients(list(model.layers[0].parameters()))
clock.loop_started()
ddp(images.float()).sum().backward()
clock.gradients_reduced()
clock.loop_ended()
torch.cuda.synchronize()
compute, gradient_wait, *_ = clock.take()
assert all(p.grad is not None for p in model.parameters())
assert compute >= 0 and gradient_wait > 0, (compute, gradient_wait)
dist.destroy_process_group()
print("all helpers ok")
