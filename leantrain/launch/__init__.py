"""Starting runs elsewhere: torchrun on this machine, SkyPilot jobs on cloud spot instances."""
