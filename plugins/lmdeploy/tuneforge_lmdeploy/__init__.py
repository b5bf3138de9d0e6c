"""tuneforge-lmdeploy: the ``lmdeploy`` inference engine (see ``tuneforge_lmdeploy.engine``)."""
