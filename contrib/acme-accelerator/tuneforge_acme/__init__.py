"""tuneforge-acme-accelerator: the acme device (the CPU under another name), to copy for real hardware."""
