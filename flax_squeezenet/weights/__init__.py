"""Weights: pretrained names and the download cache, every file format this project reads and writes
(`.pth`, ncnn, `.net`, `.sqz`, safetensors, `save_pretrained` directories), the input convention each
expects, preprocessing, and the ImageNet class names."""
