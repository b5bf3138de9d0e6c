"""tuneforge-ascend: Ascend NPUs as the ``npu`` device, through torch_npu (imported only when the device is used)."""
