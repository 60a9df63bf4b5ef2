"""The toy world: deterministic scenes, captions, the latent code, the detector's accuracy and the scoring."""
import numpy as np
import pytest
from PIL import Image, ImageFilter

from attention_guidance.toyworld import detect, latent, scoring, world

ACCURACY_SCENES = 300


def truth(scene):
    return sorted((obj.colour, obj.shape) for obj in scene.objects)


def found(image):
    return sorted((detection.colour, detection.shape) for detection in detect.detect(image))


def test_scenes_are_deterministic_per_seed():
    first, again, other = world.scenes(7, 20), world.scenes(7, 20), world.scenes(8, 20)
    assert first == again
    assert first != other
    assert all(np.array_equal(world.render(a), world.render(b)) for a, b in zip(first, again))


def test_scenes_follow_the_count_weights():
    counts = np.bincount([len(scene.objects) for scene in world.scenes(0, 1000, (0.5, 0.3, 0.2))], minlength=4)
    assert counts[0] == 0
    assert np.allclose(counts[1:] / 1000, (0.5, 0.3, 0.2), atol=0.05)


def test_captions_in_the_pack_prompt_style():
    assert world.caption(["red circle"]) == "a red circle"
    assert world.caption(["red circle", "orange square"]) == "a red circle and an orange square"
    assert world.caption(["red circle", "blue square", "green cross"]) == (
        "a red circle, a blue square and a green cross")
    scene = world.Scene((world.WorldObject("blue", "cross", 10, 10, 50), world.WorldObject("red", "circle", 90, 90, 50)))
    assert scene.caption == "a blue cross and a red circle"


def test_shapes_stay_inside_and_apart():
    for scene in world.scenes(3, 200, (0.0, 0.0, 1.0)):
        masks = [world.object_mask(obj) for obj in scene.objects]
        for obj, mask in zip(scene.objects, masks):
            assert world.MARGIN <= obj.left and obj.left + obj.size <= world.IMAGE_SIZE - world.MARGIN
            assert world.MIN_SIZE <= obj.size <= world.MAX_SIZE
        for i, first in enumerate(masks):
            near_first = world.dilate(first, world.GAP)
            assert not any((near_first & second).any() for second in masks[i + 1:])
        assert len({obj.phrase for obj in scene.objects}) == len(scene.objects)


def test_shape_masks_have_their_geometry():
    size = 60
    fill = {shape: world.shape_mask(shape, size).mean() for shape in world.SHAPES}
    assert fill["square"] == 1.0
    assert fill["circle"] == pytest.approx(np.pi / 4, abs=0.02)
    assert fill["triangle"] == pytest.approx(0.5, abs=0.03)
    assert fill["cross"] == pytest.approx(5 / 9, abs=0.03)


def test_latent_codes_what_is_where():
    obj = world.WorldObject("green", "triangle", 40, 48, 64)
    code = latent.scene_latent(world.Scene((obj,)))
    assert code.shape == (latent.LATENT_CHANNELS, world.IMAGE_SIZE // 8, world.IMAGE_SIZE // 8)
    share = latent.coverage(world.object_mask(obj))
    assert share.sum() * 64 == world.object_mask(obj).sum()
    expected = np.array([*latent.COLOUR_CODES["green"], *latent.SHAPE_CODES["triangle"]])[:, None, None] * share
    np.testing.assert_allclose(code, expected, rtol=1e-6)
    assert not code[:, share == 0].any()  # zero on the background
    codes = [np.array(c) for c in (*latent.COLOUR_CODES.values(), *latent.SHAPE_CODES.values())]
    assert all(np.linalg.norm(c) == pytest.approx(latent.AMPLITUDE) for c in codes)


def test_detector_reads_generated_scenes_back():
    """Every colour and shape of every object, no more, on scenes with one to three objects."""
    scenes = world.scenes(2024, ACCURACY_SCENES, (1 / 3, 1 / 3, 1 / 3))
    right = sum(found(world.render(scene)) == truth(scene) for scene in scenes)
    assert right / ACCURACY_SCENES >= 0.99, f"{right} of {ACCURACY_SCENES} scenes read back right"


def test_detector_reads_blurred_noisy_scenes():
    """Decoded images have soft edges and noise: a 2 px Gaussian blur and noise of 8 grey levels change nothing."""
    rng = np.random.default_rng(0)
    scenes = world.scenes(5, 60, (1 / 3, 1 / 3, 1 / 3))
    right = 0
    for scene in scenes:
        blurred = np.asarray(Image.fromarray(world.render(scene)).filter(ImageFilter.GaussianBlur(2)), np.float32)
        noisy = np.clip(blurred + rng.normal(0, 8, blurred.shape), 0, 255).astype(np.uint8)
        right += found(noisy) == truth(scene)
    assert right == len(scenes)


def test_detector_boxes_and_float_images():
    obj = world.WorldObject("purple", "square", 30, 50, 48)
    image = world.render(world.Scene((obj,))).astype(np.float32) / 255.0
    (detection,) = detect.detect(image)
    assert (detection.colour, detection.shape) == ("purple", "square")
    assert (detection.left, detection.top, detection.width, detection.height, detection.area) == (30, 50, 48, 48, 48 ** 2)


def test_detector_ignores_specks_and_unknown_blobs():
    image = np.full((192, 192, 3), world.BACKGROUND, dtype=np.uint8)
    image[10:20, 10:20] = world.COLOURS["red"]  # 100 px: a speck
    assert detect.detect(image) == []
    image[60:70, 40:160] = world.COLOURS["blue"]  # a long bar: no shape of the world
    (bar,) = detect.detect(image)
    assert bar.colour == "blue" and bar.shape is None


def detection(colour, shape):
    return detect.Detection(colour, shape, 0, 0, 10, 10, 100, 1.0)


@pytest.mark.parametrize("drawn, expected", [
    ([("red", "circle"), ("blue", "square")], dict(all_present=True, neglect=False, subject_absent=False,
                                                  colour_missing=False, binding_error=False, extra_objects=False)),
    ([("red", "circle")], dict(all_present=False, neglect=True, subject_absent=True, colour_missing=True,
                               binding_error=False, extra_objects=False)),
    ([("red", "circle"), ("red", "circle")], dict(all_present=False, neglect=True, subject_absent=True,
                                                  colour_missing=True, binding_error=False, extra_objects=False)),
    # The second subject drawn in the first one's shape: its shape is neglected, but it has an object.
    ([("red", "circle"), ("blue", "circle")], dict(all_present=False, neglect=True, subject_absent=False,
                                                   colour_missing=False, binding_error=False, extra_objects=False)),
    # A stray blob of a third colour and no shape does not stand for the missing subject.
    ([("red", "circle"), ("green", None)], dict(all_present=False, neglect=True, subject_absent=True,
                                                colour_missing=True, binding_error=False, extra_objects=False)),
    ([("blue", "circle"), ("red", "square")], dict(all_present=False, neglect=False, subject_absent=False,
                                                   colour_missing=False, binding_error=True, extra_objects=False)),
    ([("red", "circle"), ("red", "square")], dict(all_present=False, neglect=False, subject_absent=False,
                                                  colour_missing=True, binding_error=True, extra_objects=False)),
    ([("red", "circle"), ("blue", "square"), ("green", None)], dict(all_present=True, neglect=False,
                                                                    subject_absent=False, colour_missing=False,
                                                                    binding_error=False, extra_objects=True)),
    ([], dict(all_present=False, neglect=True, subject_absent=True, colour_missing=True, binding_error=False,
              extra_objects=False)),
])
def test_scoring(drawn, expected):
    outcome = scoring.score([("red", "circle"), ("blue", "square")], [detection(*d) for d in drawn])
    assert {key: getattr(outcome, key) for key in expected} == expected
    assert outcome.objects == len(drawn)
