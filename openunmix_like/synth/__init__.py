"""Synthetic multitrack corpus: songs composed by program, rendered with FluidSynth and sung voices."""
