"""mlperf-resnet: ResNet-50 with the Mosaic "Mild" recipe for MLPerf Training (open division)."""

__version__ = "0.1.0"
