class ConvNet(Module):
  __parameters__ = []
  __buffers__ = []
  training : bool
  _is_full_backward_hook : Optional[bool]
  features : __torch__.torch.nn.modules.container.Sequential
  def forward(self: __torch__.ConvNet,
    x: Tensor) -> Tensor:
    features = self.features
    return (features).forward(x, )
