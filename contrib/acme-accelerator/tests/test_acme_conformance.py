"""The acme device passes tuneforge's device conformance kit: what every device plugin runs against itself."""

import tuneforge_acme.plugin
from tuneforge.testing.device_conformance import DeviceConformance


class TestAcmeConformance(DeviceConformance):
    device_name = "acme"
    plugin = (tuneforge_acme.plugin, "acme", "tuneforge-acme-accelerator")
