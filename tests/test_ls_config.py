"""Label config parsing: image keys and output controls found by type and toName."""

from __future__ import annotations

import pytest

from label_anything.labelstudio.config import LabelConfigError, parse_label_config


def test_original_config(original_label_config):
    cfg = parse_label_config(original_label_config)
    assert cfg.image_key("image") == "image"
    for type_, name in [
        ("brushlabels", "BrushLabels"),
        ("rectanglelabels", "RectangleLabels"),
        ("polygonlabels", "PolygonLabels"),
        ("keypointlabels", "KeyPointLabels"),
    ]:
        control = cfg.output_control(type_, "image")
        assert control is not None and control.name == name
        assert control.labels == ("cat", "person")


def test_controls_found_by_type_and_to_name_not_by_name():
    xml = """<View>
      <Image name="left" value="$a"/><Image name="right" value="$b"/>
      <BrushLabels name="mask_left" toName="left"><Label value="x"/></BrushLabels>
      <BrushLabels name="mask_right" toName="right"><Label value="y"/></BrushLabels>
      <View><RectangleLabels name="boxes" toName="right"><Label value="y"/></RectangleLabels></View>
    </View>"""
    cfg = parse_label_config(xml)
    assert cfg.image_key("left") == "a" and cfg.image_key("right") == "b"
    assert cfg.output_control("brushlabels", "right").name == "mask_right"
    assert cfg.output_control("brushlabels", "left").labels == ("x",)
    assert cfg.output_control("rectanglelabels", "left") is None
    assert cfg.output_control("rectanglelabels", "right").name == "boxes"


def test_unknown_image_object_is_a_clear_error(original_label_config):
    cfg = parse_label_config(original_label_config)
    with pytest.raises(LabelConfigError, match="no <Image name='photo'>"):
        cfg.image_key("photo")


@pytest.mark.parametrize(
    "xml", ["", "<View>", "not xml at all <", "<!DOCTYPE x [<!ENTITY a 'b'>]><View>&a;</View>"]
)
def test_bad_or_dangerous_xml_is_refused(xml):
    with pytest.raises(LabelConfigError):
        parse_label_config(xml)
