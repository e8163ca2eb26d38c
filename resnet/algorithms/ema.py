"""EMA of the weights (RECIPE.md section 8), buffers (BatchNorm statistics) included."""
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def ema_model(model: nn.Module, decay: float) -> AveragedModel:
    """An AveragedModel with ema = decay * ema + (1 - decay) * model over parameters and buffers;
    it starts as a copy at the first `update_parameters` call."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
