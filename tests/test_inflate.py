"""2-D -> 3-D inflation (``s4nd_timm.inflate_2d_to_3d``): every 2-D weight lands in the 3-D model, and the
3-D model reproduces the 2-D one on temporally constant clips when its time kernels are impulses."""
import pytest
import timm
import torch
import torch.nn as nn

import s4nd_timm
from s4nd_timm.layers import S4ND
from s4nd_timm.models.s4nd_convnext import checkpoint_filter_fn

TINY = dict(depths=(1, 1, 2, 1), dims=(16, 24, 32, 40), img_size=64, d_state=8, ls_init_value=1.0)
FRAMES = 4


def _pair(**kwargs):
    """A 2-D model with non-zero biases (as trained weights have; at init they are 0) and its 3-D twin."""
    m2 = timm.create_model('s4nd_convnext_tiny', **TINY, **kwargs).eval()
    with torch.no_grad():
        for m in m2.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.LayerNorm)) and m.bias is not None:
                m.bias.normal_(0.0, 0.1)
    m3 = timm.create_model('s4nd_convnext_tiny_3d', num_frames=FRAMES, **TINY, **kwargs).eval()
    return m2, m3


class _Impulse(nn.Module):
    """Time kernel k(t) = δ(t): forward tap 0 is 1, every other tap (and the backward half) 0."""

    def __init__(self, kernel_channels: int, dim: int, channels: int):
        super().__init__()
        self.kernel_channels, self.dim, self.channels = kernel_channels, dim, channels

    def forward(self, length: int, rate: float = 1.0) -> torch.Tensor:
        taps = torch.zeros(self.kernel_channels, self.dim, length)
        taps[:self.channels, :, 0] = 1.0
        return taps


@pytest.mark.parametrize('variant', [dict(), dict(stem_type='s4nd', downsample_type='s4nd', stem_chs=8)])
def test_every_2d_weight_lands(variant):
    m2, m3 = _pair(**variant)
    sd2, init3 = m2.state_dict(), m3.state_dict()
    sd3 = s4nd_timm.inflate_2d_to_3d(sd2, m3)
    m3.load_state_dict(sd3)  # strict: every 3-D tensor is there
    s4nd = [name for name, m in m3.named_modules() if isinstance(m, S4ND)]
    placed = 0
    for key, value in sd2.items():
        if key.startswith('head.fc.'):
            continue
        dest = key
        for name in s4nd:
            prefix = f'{name}.kernel.'
            if key.startswith(prefix):
                axis, rest = key[len(prefix):].split('.', 1)
                dest = f'{prefix}{int(axis) + 1}.{rest}'
        got = sd3[dest]
        if value.dim() == 4 and got.dim() == 5:  # conv: repeated along time, not rescaled
            assert torch.equal(got, value.unsqueeze(2).expand_as(got)), key
        else:
            assert torch.equal(got, value), key
        placed += 1
    assert placed == len(sd2) - 2  # all but the classifier
    for name in s4nd:  # the time kernels keep the 3-D model's own init
        for key in init3:
            if key.startswith(f'{name}.kernel.0.'):
                assert torch.equal(sd3[key], init3[key]), key
    assert torch.equal(sd3['head.fc.weight'], init3['head.fc.weight'])


def test_normalize_stem_divides_by_time_patch():
    m2, m3 = _pair()
    sd3 = s4nd_timm.inflate_2d_to_3d(m2.state_dict(), m3, normalize_stem=True)
    w2 = m2.state_dict()['stem.conv.weight']
    torch.testing.assert_close(sd3['stem.conv.weight'].sum(2), w2)


@pytest.mark.parametrize('variant', [dict(), dict(stem_type='s4nd', downsample_type='s4nd', stem_chs=8)])
def _clip_features(m2, m3, normalize_stem: bool, impulse: bool):
    m3.load_state_dict(s4nd_timm.inflate_2d_to_3d(m2.state_dict(), m3, normalize_stem=normalize_stem))
    if impulse:
        for layer in m3.s4nd_layers():
            k = layer.kernel[0]
            layer.kernel[0] = _Impulse(k.kernel_channels, k.dim, layer.channels)
    frame = torch.randn(2, 3, 64, 64)
    clip = frame.unsqueeze(2).expand(-1, -1, FRAMES, -1, -1)
    with torch.no_grad():
        f2, f3 = m2.forward_features(frame), m3.forward_features(clip)
        return f2, f3, m2.forward_head(f2, pre_logits=True), m3.forward_head(f3, pre_logits=True)


@pytest.mark.parametrize('variant', [dict(), dict(stem_type='s4nd', downsample_type='s4nd', stem_chs=8)])
def test_constant_clip_matches_2d_model(variant):
    """The property inflation preserves: with impulse time kernels and the stem normalized, the 3-D model on a
    clip repeating one frame computes the 2-D model's features on that frame at every time step."""
    f2, f3, p2, p3 = _clip_features(*_pair(**variant), normalize_stem=True, impulse=True)
    assert f3.shape[2] == FRAMES // 2
    for t in range(f3.shape[2]):
        torch.testing.assert_close(f3[:, :, t], f2, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(p3, p2, rtol=1e-4, atol=1e-4)


def test_constant_clip_reference_settings_are_approximate():
    """With the reference's un-normalized stem (2x the conv response before the stem LayerNorm, whose bias no
    longer cancels) or a learned time kernel, the match is only approximate: fine-tuning starts from there."""
    for normalize_stem, impulse in ((False, True), (True, False)):
        f2, f3, _, _ = _clip_features(*_pair(), normalize_stem=normalize_stem, impulse=impulse)
        assert not torch.allclose(f3[:, :, 0], f2, rtol=1e-4, atol=1e-4)


def test_mismatched_models_are_refused():
    m2 = timm.create_model('s4nd_convnext_tiny', stem_type='s4nd', stem_chs=8, **TINY)
    m3 = timm.create_model('s4nd_convnext_tiny_3d', num_frames=FRAMES, **TINY)
    with pytest.raises(ValueError, match='stem_type'):
        s4nd_timm.inflate_2d_to_3d(m2.state_dict(), m3)
    with pytest.raises(ValueError, match='3-D'):
        s4nd_timm.inflate_2d_to_3d(m2.state_dict(), m2)
    wide = timm.create_model('s4nd_convnext_tiny', **dict(TINY, dims=(16, 24, 32, 48)))
    with pytest.raises(ValueError, match='shape mismatch'):
        s4nd_timm.inflate_2d_to_3d(wide.state_dict(), m3)


def test_pretrained_filter_inflates_2d_checkpoints():
    """A 2-D checkpoint given to the video model (timm's pretrained path) is inflated on load."""
    m2, m3 = _pair()
    filtered = checkpoint_filter_fn({'state_dict': m2.state_dict()}, m3)
    expected = s4nd_timm.inflate_2d_to_3d(m2.state_dict(), m3)
    assert filtered.keys() == expected.keys()
    assert all(torch.equal(filtered[k], expected[k]) for k in expected)
