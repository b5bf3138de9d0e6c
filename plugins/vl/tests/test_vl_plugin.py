"""The plugin loads through its entry point's module and passes tuneforge's API checks."""

import tuneforge_vl.plugin


def test_the_plugin_declares_the_api_version_it_was_written_for(manager):
    assert tuneforge_vl.plugin.TUNEFORGE_API == "1.0"
    assert manager.get_plugin("vl") is tuneforge_vl.plugin
