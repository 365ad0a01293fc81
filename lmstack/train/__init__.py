"""Training: optimizers and schedules, the shard loader, checkpoints, the anomaly guard,
distributed wrappers, the generic Trainer and the ``pretrain`` stage."""

from lmstack.train.anomaly import AnomalyConfig, AnomalyGuard
from lmstack.train.loader import TokenLoader
from lmstack.train.optim import OptimConfig, build_optimizer
from lmstack.train.schedule import ScheduleConfig, lr_lambda
from lmstack.train.trainer import TrainConfig, Trainer, TrainSummary

__all__ = ["AnomalyConfig", "AnomalyGuard", "TokenLoader", "OptimConfig", "build_optimizer",
           "ScheduleConfig", "lr_lambda", "TrainConfig", "Trainer", "TrainSummary"]
