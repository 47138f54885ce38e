"""Datasets: VoiceBank+DEMAND, paired folders and the embedded synth corpus; open_dataset is the entry point."""
