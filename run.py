#!/usr/bin/env python3
"""BIDS-Apps entry point: ``run.py bids_dir output_dir participant|group [options]``."""

from neuroharmony_bids.cli.run import main

if __name__ == "__main__":
    main()
