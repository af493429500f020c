"""Label Studio export → datasets: COCO (RLE | polygons), YOLO-seg, MMDetection configs, previews."""
