"""Data: synthetic sets (synth), image folders (folders), the .beton format (beton) that `prepare` writes, and the
loaders behind one seam (loaders: LoaderSpec -> make_loaders -> one backend module: ffcv_loader, dali_loader,
torchvision_loader). FFCV's internals are overridden in one module, ffcv_patches."""
