"""PyTorch CPU tensors through DLPack (bf16 included), where torch is installed: torch is an
optional extra that the project's scripts do not install, so this is reported as skipped
otherwise (the DLPack path itself is covered with numpy in cases.py)."""

import pytest

torch = pytest.importorskip("torch")

from conftest import launch  # noqa: E402

SCRIPT = r'''
import torch, tutti
tutti.init_process_group()
r, n = tutti.get_rank(), tutti.get_world_size()
for dtype in [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.int32, torch.uint8, torch.int8]:
    t = torch.full((3, 5), r + 1, dtype=dtype)
    ptr = t.data_ptr()
    tutti.all_reduce(t)
    assert t.data_ptr() == ptr
    assert torch.equal(t, torch.full((3, 5), n * (n + 1) // 2, dtype=dtype)), (dtype, t)
    b = torch.full((4,), r, dtype=dtype)
    tutti.broadcast(b, src=n - 1)
    assert torch.equal(b, torch.full((4,), n - 1, dtype=dtype))
    out = torch.zeros(2 * n, dtype=dtype)
    tutti.all_gather_into_tensor(out, torch.full((2,), r, dtype=dtype))
    assert torch.equal(out, torch.arange(n, dtype=torch.int64).repeat_interleave(2).to(dtype))
try:
    tutti.all_reduce(torch.zeros(4, 4)[:, 1])
except ValueError as e:
    assert "not C-contiguous" in str(e)
else:
    raise AssertionError("a non-contiguous tensor was accepted")
print("RESULT torch OK", flush=True)
'''


def test_torch_tensors(tmp_path):
    script = tmp_path / "torch_case.py"
    script.write_text(SCRIPT)
    r = launch(2, str(script))
    assert r.rc == 0, r.err[-3000:]
    r.assert_case("torch")
