class GELU(Module):
  __parameters__ = []
  __buffers__ = []
  training : bool
  _is_full_backward_hook : Optional[bool]
  def forward(self: __torch__.torch.nn.modules.activation.GELU,
    argument_1: Tensor) -> Tensor:
    return torch.gelu(argument_1)
