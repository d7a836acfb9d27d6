"""Named dataset recipes: the paper's evaluation sets from the layouts they ship in (``dive data suite``).

A recipe knows a dataset's source layouts (official / torchvision, CoOp's split files, CLIP_benchmark's
webdataset folders), its class names, its templates and the head it is scored with. ``registry`` holds them,
``convert`` turns one into a labelled set with the shared converter loop, ``names`` reads the class lists and
templates that installed packages ship.
"""
