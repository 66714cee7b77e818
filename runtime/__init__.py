"""The noisy runtime emulator (see DESIGN.md section 7); it reads only a layout."""
