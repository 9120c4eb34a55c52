from flowcli.synth.generator import SynthConfig, SynthSample, TextureBank, generate_batch, generate_sample

__all__ = ["SynthConfig", "SynthSample", "TextureBank", "generate_sample", "generate_batch"]
