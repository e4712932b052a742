"""One training step of a GenLIP network on the meta device: its counted FLOPs and a timeline of the bytes alive.

    python -c "from genlip_lit.plan.trace import demo; demo()"

Nothing is allocated: parameters and activations are meta tensors (shape and dtype only), so So/16 or g/16 at a
real micro-batch is traced in a second on a laptop. Three interposers run the forward, loss and backward of
one step exactly as training runs it: an objective's own `training_step` (any registered objective, built by
plan/objective.py), or a bare GenLIP network's `loss`:

- the FLOP counter the `Throughput` callback uses (perf/counting.py), so a planned and a logged count agree;
- `_MetaKernels` (a TorchFunctionMode) stands in for what the meta device cannot choose or do itself. Attention
  runs as the fused kernel the CPU and CUDA paths use (it saves q, k, v, the output and the log-sum-exp, never
  the score matrix; the meta device would pick the unfused math path). Under a bf16 precision it casts as CUDA
  autocast does, since autocast refuses meta tensors: matmul / linear / conv / attention inputs to bf16 with one
  cached copy per weight, layer norm, softmax and cross-entropy in fp32, everything else in its input dtype;
- `_LiveBytes` (a TorchDispatchMode) records every new storage an op creates and, through a weakref finalizer,
  the moment the last tensor viewing it dies. The timeline then gives the peak and what is alive at chosen
  moments, for any mix of what else a strategy keeps (StepTrace). Boolean-mask indexing has a data-dependent
  size the meta device cannot compute; the loss mask's count of targets is known, so it is supplied.

What it does not see: the caching allocator's rounding and fragmentation (perf/devices.py keeps headroom for them)
and anything outside the loss (the optimizer step, communication buffers: plan/memory.py models those).
"""

from __future__ import annotations

import dataclasses
import warnings
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from genlip_lit.errors import GenLIPUserError
from genlip_lit.perf.counting import flop_counter

aten = torch.ops.aten


@dataclass(frozen=True)
class SampleShape:
    """What one sample puts through the network: its patch grid and its text."""

    grid: tuple[int, int]
    text_tokens: int  # every text position (BOS, prompt, caption, EOS, ...)
    head_tokens: int  # leading text positions without loss (BOS and prompt)

    @property
    def patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def targets(self) -> int:
        """Loss targets: every text position after the head (the first token is never a target)."""
        return max(self.text_tokens - max(self.head_tokens, 1), 0)


@dataclass
class StepTrace:
    """Forward + backward of one micro-batch: counted FLOPs and the alive-bytes timeline (above parameters)."""

    micro_batch: int
    flops: int
    events: list[tuple[int, int]]  # (storage number, +bytes when created / -bytes when freed), in order
    kinds: dict[int, str] = field(default_factory=dict)  # storage number -> "grad" | "weight_copy"
    marks: dict[str, int] = field(default_factory=dict)  # moment -> number of events before it

    def _running(self, exclude: Iterable[str]) -> list[int]:
        skip = set(exclude)
        alive, out = 0, []
        for number, delta in self.events:
            if self.kinds.get(number) not in skip:
                alive += delta
            out.append(alive)
        return out

    def peak(self, exclude: Iterable[str] = ()) -> int:
        """Highest alive bytes over the step, leaving out storages of the given kinds."""
        return max(self._running(exclude), default=0)

    def alive_at(self, mark: str, exclude: Iterable[str] = ()) -> int:
        index = self.marks[mark]
        return self._running(exclude)[index - 1] if index else 0

    def peak_between(self, start: str, end: str, exclude: Iterable[str] = ()) -> int:
        """Highest alive bytes from moment `start` (included) to moment `end`."""
        running = self._running(exclude)
        return max(running[self.marks[start] : self.marks[end]], default=0)

    def kind_bytes(self, kind: str) -> int:
        """Bytes of all storages of one kind (e.g. every gradient)."""
        sizes = {n: d for n, d in self.events if d > 0}
        return sum(sizes[n] for n, k in self.kinds.items() if k == kind and n in sizes)


class _LiveBytes(TorchDispatchMode):
    """Records storage creation and death; sizes boolean-mask indexing from known true-counts."""

    def __init__(self, true_counts: dict[tuple[int, ...], int]) -> None:
        super().__init__()
        self.true_counts = true_counts
        self.events: list[tuple[int, int]] = []
        self.numbers: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.marks: dict[str, int] = {}
        self._next_number = 0

    def mark(self, name: str) -> None:
        self.marks[name] = len(self.events)

    def ignore(self, tensors: Iterable[Tensor]) -> None:
        """Storages that exist before the step (parameters, buffers, inputs): a view of one (a weight's `.t()`)
        must not count it as new memory."""
        for tensor in tensors:
            self.numbers.setdefault(tensor.untyped_storage(), -1)

    def number_of(self, tensor: Tensor) -> int | None:
        return self.numbers.get(tensor.untyped_storage())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten.nonzero.default and _is_meta_bool(args[0]):
            return torch.empty((self._true_count(args[0]), args[0].dim()), dtype=torch.long, device="meta")
        if func in _INDEXING and any(_is_meta_bool(i) for i in args[1] if i is not None):
            args = (args[0], self._long_indices(args[1]), *args[2:])
        out = func(*args, **kwargs)
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, Tensor):
                self._track(tensor)
        return out

    def _true_count(self, mask: Tensor) -> int:
        count = self.true_counts.get(tuple(mask.shape))
        if count is None:
            raise RuntimeError(f"the meta trace met a boolean mask of shape {tuple(mask.shape)} it cannot size")
        return count

    def _long_indices(self, indices: list[Tensor | None]) -> list[Tensor | None]:
        out: list[Tensor | None] = []
        for index in indices:
            if index is not None and _is_meta_bool(index):
                count = self._true_count(index)
                out.extend(torch.empty(count, dtype=torch.long, device="meta") for _ in range(index.dim()))
            else:
                out.append(index)
        return out

    def _track(self, tensor: Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage in self.numbers:
            return
        number = self._next_number
        self._next_number += 1
        self.numbers[storage] = number
        nbytes = storage.nbytes()
        self.events.append((number, nbytes))
        weakref.finalize(storage, self.events.append, (number, -nbytes))


_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default,
             aten._unsafe_index_put.default}


def _is_meta_bool(tensor: object) -> bool:
    return isinstance(tensor, Tensor) and tensor.dtype == torch.bool and tensor.device.type == "meta"


# CUDA autocast's lists, as far as this network uses them
_LOWER_PRECISION = {F.linear, torch.conv2d, F.conv2d, torch.matmul, Tensor.matmul, Tensor.__matmul__, torch.mm,
                    Tensor.mm, torch.bmm, Tensor.bmm, torch.addmm, torch.baddbmm, F.scaled_dot_product_attention}
_FP32 = {F.layer_norm, F.group_norm, F.softmax, F.log_softmax, Tensor.softmax, Tensor.log_softmax, F.cross_entropy,
         F.nll_loss}


class _MetaKernels(TorchFunctionMode):
    """Fused attention instead of the meta device's math path; CUDA-autocast casts when `half` is a dtype."""

    def __init__(self, half: torch.dtype | None) -> None:
        super().__init__()
        self.half = half
        self.weight_copies: dict[int, Tensor] = {}  # autocast's cache: one cast per weight per forward
        self.caching = True  # off in backward: a checkpointed block's recomputation casts afresh, as autocast

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.half is not None and func in _LOWER_PRECISION:
            args, kwargs = self._cast(args, self.half), self._cast(kwargs, self.half)
        elif self.half is not None and func in _FP32:
            args, kwargs = self._cast(args, torch.float32), self._cast(kwargs, torch.float32)
        if func is F.scaled_dot_product_attention:
            return _fused_attention(*args, **kwargs)
        return func(*args, **kwargs)

    def _cast(self, value, dtype: torch.dtype):
        if isinstance(value, (list, tuple)):
            return type(value)(self._cast(v, dtype) for v in value)
        if isinstance(value, dict):
            return {k: self._cast(v, dtype) for k, v in value.items()}
        if not isinstance(value, Tensor) or not value.is_floating_point() or value.dtype == dtype:
            return value
        if self.caching and isinstance(value, nn.Parameter):  # a weight: cast once per forward
            # keyed by id, but parameters outlive the trace, so an id is never reused for another tensor
            copy = self.weight_copies.get(id(value))
            if copy is None:
                copy = self.weight_copies[id(value)] = value.to(dtype)
            return copy
        return value.to(dtype)


def _fused_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
                     dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                     enable_gqa: bool = False) -> Tensor:
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        # the kernels turn a boolean mask into an additive one of the same shape
        attn_mask = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device)
    out, _ = aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, dropout_p, is_causal,
                                                             attn_mask=attn_mask, scale=scale)
    return out


def _recompute_hooks(blocks: list[nn.Module], kernels: _MetaKernels) -> list:
    """Put the kernels back in place while a checkpointed block recomputes its forward inside backward.

    Backward cannot run under the mode itself: `Tensor.backward` is a torch function, and a mode is off while
    it handles one, so the engine would run (and recompute) without it. The engine also restores its own
    thread-local state after each node, which drops a mode pushed there when recomputation stops early (before
    the block's forward hook runs), so the stack itself says whether the mode is in place.
    """
    from torch.overrides import _get_current_function_mode_stack

    entered: list[nn.Module] = []

    def before(module: nn.Module, args: object) -> None:
        if kernels not in _get_current_function_mode_stack():
            kernels.__enter__()
            entered.append(module)

    def after(module: nn.Module, args: object, output: object) -> None:
        if entered and entered[-1] is module:
            entered.pop()
            if kernels in _get_current_function_mode_stack():
                kernels.__exit__(None, None, None)

    return [h for blk in blocks for h in (blk.register_forward_pre_hook(before), blk.register_forward_hook(after))]


def meta_model(config, attn_impl: str = "sdpa") -> nn.Module:
    """The GenLIP network of `config` on the meta device (no memory), compiled blocks off, in training mode."""
    from genlip_lit.models import GenLIP

    with torch.device("meta"):
        model = GenLIP(dataclasses.replace(config, compile_blocks=False))
    if hasattr(model, "set_attn_impl"):
        model.set_attn_impl(attn_impl)
    return model.train()


def step_of(model: nn.Module) -> tuple[nn.Module, object, Callable[[Tensor, Tensor, Tensor], Tensor]]:
    """(the network whose blocks run, its GenLIPConfig, the loss of one batch) of what `trace_step` is given.

    An objective (an EncoderModule: it has `training_step` and `optimized_model`) is traced through its own
    `training_step` on a fixed-resolution `Batch`, so its loss is what training computes; a bare GenLIP
    network through its `loss`."""
    if callable(getattr(model, "training_step", None)) and callable(getattr(model, "optimized_model", None)):
        from genlip_lit.data.batch import Batch

        def objective_loss(pixels: Tensor, input_ids: Tensor, loss_mask: Tensor) -> Tensor:
            # the loss mask stands in for the text mask (same shape and dtype): no storage the timeline would count
            batch = Batch(pixels, input_ids, loss_mask, loss_mask)
            with warnings.catch_warnings():  # self.log without a trainer: nothing to log in a trace
                warnings.filterwarnings("ignore", message=".*self.log.*")
                loss = model.training_step(batch, 0)
            if not isinstance(loss, Tensor):
                raise GenLIPUserError(f"{type(model).__name__}.training_step returned {type(loss).__name__} on a meta "
                                      "batch, not its loss: genlip plan traces the loss it returns")
            return loss

        return model.optimized_model(), model.config, objective_loss
    return model, model.cfg, lambda pixels, input_ids, loss_mask: model.loss(pixels, input_ids, loss_mask).loss


def blocks_of(network: nn.Module) -> list[nn.Module]:
    """The network's transformer blocks, the ones activation checkpointing recomputes: its FSDP units
    (`shard_units()`), or those of the outermost submodules that declare them (a contrastive objective's image
    tower); `blocks` of a network that declares none."""
    units = getattr(network, "shard_units", None)
    if callable(units):
        return list(units())
    found: list[nn.Module] = []
    for name, sub in network.named_modules():
        if name and callable(getattr(sub, "shard_units", None)) and not any(
                sub in outer.modules() for outer in found):
            found.append(sub)
    if found:
        return [unit for outer in found for unit in outer.shard_units()]
    return list(getattr(network, "blocks", []))


def trace_step(model: nn.Module, shape: SampleShape, micro_batch: int, half: torch.dtype | None = None,
               checkpointing: bool = False) -> StepTrace:
    """Forward, loss and backward of `micro_batch` samples of `shape` through a meta `model` (an objective built
    by plan/objective.py, or a GenLIP network from `meta_model`)."""
    network, cfg, loss_of = step_of(model)
    b, (gh, gw), p = micro_batch, shape.grid, cfg.patch_size
    # under a "*-true" precision Lightning hands the step its inputs in the parameters' dtype
    dtype = next((t.dtype for t in network.parameters() if t.is_floating_point()), torch.float32)
    pixels = torch.empty(b, cfg.in_chans, gh * p, gw * p, dtype=dtype, device="meta")
    input_ids = torch.empty(b, shape.text_tokens, dtype=torch.long, device="meta")
    loss_mask = torch.empty(b, shape.text_tokens, dtype=torch.bool, device="meta")
    # next_token_loss indexes with loss_mask[:, 1:]
    live = _LiveBytes({(b, shape.text_tokens - 1): b * shape.targets})
    live.ignore([*model.parameters(), *model.buffers(), pixels, input_ids, loss_mask])
    kernels = _MetaKernels(half)
    hooks = _recompute_hooks(blocks_of(network), kernels)
    if isinstance(getattr(network, "norm", None), nn.Module):  # the blocks end at the final norm
        hooks.append(network.norm.register_forward_hook(lambda *_: live.mark("trunk_end")))
    before = cfg.grad_checkpointing
    cfg.grad_checkpointing = checkpointing
    try:
        with flop_counter() as counter, live:
            live.mark("start")
            with kernels:
                loss = loss_of(pixels, input_ids, loss_mask)
            live.mark("forward_end")
            copies = [live.number_of(t) for t in kernels.weight_copies.values()]
            kernels.weight_copies.clear()  # autocast drops its cache here; autograd keeps what backward needs
            kernels.caching = False
            loss.backward()
            del loss
            live.mark("backward_end")
        kinds = {n: "weight_copy" for n in copies if n is not None}
        for param in model.parameters():
            if param.grad is not None:
                number = live.number_of(param.grad)
                if number is not None:
                    kinds[number] = "grad"
                param.grad = None
    finally:
        cfg.grad_checkpointing = before
        for hook in hooks:
            hook.remove()
    live.marks.setdefault("trunk_end", live.marks["forward_end"])
    return StepTrace(b, counter.get_total_flops(), list(live.events), kinds, dict(live.marks))


def demo() -> None:
    from genlip_lit.models import GenLIPConfig

    model = meta_model(GenLIPConfig.from_name("so16", vocab_size=151936, loss_chunk_tokens=1024))
    trace = trace_step(model, SampleShape((14, 14), 74, 7), 2, torch.bfloat16)
    print(f"So/16, 224 px, 74 text tokens: {trace.flops / 2 / 1e9:.1f} GFLOP per sample, "
          f"peak {trace.peak() / 2**30:.2f} GiB above the parameters at micro-batch 2")
