"""A 4-process all-reduce from Python: python -m tutti.launch -n 4 python/examples/all_reduce.py"""

import numpy as np

import tutti

tutti.init_process_group()
rank, world = tutti.get_rank(), tutti.get_world_size()

grad = np.full(1 << 20, rank + 1, dtype=np.float32)
address = grad.ctypes.data
tutti.all_reduce(grad, op=tutti.ReduceOp.SUM)  # in place: grad's own memory is written
assert grad.ctypes.data == address and np.all(grad == world * (world + 1) / 2)

work = tutti.all_reduce(grad, op=tutti.ReduceOp.AVG, async_op=True)  # the library's progress thread
work.wait()

everyone = np.zeros(world, dtype=np.int64)
tutti.all_gather_into_tensor(everyone, np.array([rank * 10], dtype=np.int64))
print(f"rank {rank} of {world}: sum, then average: {grad[0]}; all_gather: {everyone.tolist()}")
tutti.destroy_process_group()
