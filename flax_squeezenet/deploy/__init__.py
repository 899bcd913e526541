"""Files for devices: ONNX (float32 and int8) and LiteRT (float32 and int8), written from the layer plan."""
