"""The torchvision backend (LOADER=torchvision): the ImageNet folders read by PIL in DataLoader processes. No
dependency beyond torchvision and the slowest backend (BENCHMARKS.md); the reference the other two are tested
against. See resnet/data/loaders.py for the contract."""
from resnet.data.folders import read_dataset, read_image
from resnet.data.loaders import Backend, Batches, normalize_nhwc, shard_order
from resnet.data.workers import loader_worker_init
from resnet.errors import DataError

BACKEND = Backend(reads="folders", needs="torchvision", library="torchvision",
                  install="pip install torchvision (the release made for the installed torch)",
                  workers="DataLoader processes per rank (0: decode in the training process)", min_workers=0,
                  decode_to_side=False, randaugment=True)


class _Files:
    """Map-style data set over (path, label) samples: item = (transform(RGB PIL image), label)."""

    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        return self.transform(read_image(path)), label


class _ShardSampler:
    """`shard_order` as a torch Sampler (the epoch is set before each pass)."""

    def __init__(self, n, rank, world_size, seed, shuffle):
        self.args = (n, rank, world_size, seed)
        self.shuffle = shuffle
        self.epoch = 0
        self.length = len(shard_order(n, rank, world_size, seed, 0, shuffle))

    def __iter__(self):
        return iter(shard_order(*self.args, self.epoch, self.shuffle).tolist())

    def __len__(self):
        return self.length


class RandAugment:
    """RandAugment on a PIL training image (RECIPE.md section 12) with torchvision's `RandAugment` operations, drawn
    as Composer draws them: `depth` operations, each image at a magnitude drawn uniformly in [0, severity] of 10
    (torchvision's own keeps one magnitude for the run). Bilinear resampling, as Composer's. Picklable (a module
    level class) for the DataLoader's worker processes, which seed torch's RNG per worker."""

    def __init__(self, depth: int, severity: int):
        from torchvision import transforms as T

        if not 0 <= severity <= 10:
            raise ValueError(f"RandAugment severity must be in [0, 10], got {severity}")
        self.by_magnitude = [T.RandAugment(depth, m, num_magnitude_bins=11,
                                           interpolation=T.InterpolationMode.BILINEAR) for m in range(severity + 1)]

    def __call__(self, image):
        import torch

        return self.by_magnitude[int(torch.randint(len(self.by_magnitude), ()))](image)


def train_transform(spec):
    """RandomResizedCrop -> horizontal flip -> (RandAugment, when the spec asks) -> uint8 tensor."""
    from torchvision import transforms as T

    crop = T.RandomResizedCrop(spec.train_crop_px, scale=(spec.crop_scale_min, 1.0), ratio=(3 / 4, 4 / 3))
    augment = [RandAugment(*spec.randaugment)] if spec.randaugment else []
    return T.Compose([crop, T.RandomHorizontalFlip(), *augment, T.PILToTensor()])


def _worker_error(e: DataError) -> DataError:
    """A DataLoader process re-raises a worker's DataError with the worker's traceback as its text: keep the one
    line that names the file (the traceback's last line, after the exception's type)."""
    last = str(e).strip().splitlines()[-1]
    return DataError(last.split("DataError: ", 1)[-1])


def build(data_dir, spec):
    import torch
    from torch.utils.data import DataLoader
    from torchvision import transforms as T

    train_samples, val_samples, info = read_dataset(data_dir, spec, read_image)
    device = spec.torch_device
    train_tf = train_transform(spec)
    val_tf = T.Compose([T.Resize(spec.eval_resize_px), T.CenterCrop(spec.eval_crop_px), T.PILToTensor()])

    def loader(samples, transform, dtype, shuffle):
        sampler = _ShardSampler(len(samples), spec.rank, spec.world_size, spec.seed, shuffle)
        torch_loader = DataLoader(_Files(samples, transform), batch_size=spec.batch_size, sampler=sampler,
                                  num_workers=spec.workers, pin_memory=device.type == "cuda", drop_last=shuffle,
                                  persistent_workers=spec.workers > 0, worker_init_fn=loader_worker_init)

        def iterate(epoch):
            sampler.epoch = epoch
            try:
                for images, labels in torch_loader:
                    images = images.to(device, non_blocking=True).permute(0, 2, 3, 1)  # NHWC view, uint8
                    out = torch.empty(images.shape, dtype=dtype, device=device)
                    yield normalize_nhwc(images, out).permute(0, 3, 1, 2), labels.to(device, non_blocking=True)
            except DataError as e:
                raise _worker_error(e) from None

        return Batches(iterate, len(torch_loader), spec.batch_size, len(sampler))

    train = loader(train_samples, train_tf, spec.dtype(train=True), shuffle=True)
    val = loader(val_samples, val_tf, spec.dtype(train=False), shuffle=False)
    return train, val, info
