"""What another pack's ``optimized_attention_override`` sees of an attention call, for tests that stand in for one."""
from __future__ import annotations

import torch


def call_queries_and_keys(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The call's q and k as ``[B, H, L, D]`` (the host passes ``[B, L, H·D]`` unless ``skip_reshape``)."""
    q, k = args[0], args[1]
    heads = args[3] if len(args) > 3 else kwargs["heads"]
    if not kwargs.get("skip_reshape"):
        q, k = (t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k))
    return q, k


__all__ = ["call_queries_and_keys"]
