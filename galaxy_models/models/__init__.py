"""Models: CBAM attention, the ResNet with an attention hook in every bottleneck, the registered
architectures (``resnet50``, ``cs_resnet50``, tiny variants), preprocessing and weights-only
serialisation."""
