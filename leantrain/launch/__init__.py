"""Starting runs elsewhere: torchrun on this machine, SkyPilot jobs on cloud spot instances,
and watched `leantrain train` child processes (the rungs of `ablate`, the trials of `tune`)."""
