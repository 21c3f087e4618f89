"""segdense.readers: every format read as (H, W, C) in its own dtype, layouts declared or stated by the file,
never guessed from an ambiguous shape."""
import numpy as np
import pytest
import tifffile
from PIL import Image

from segdense.readers import ImageReadError, read_image, select_bands


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
@pytest.mark.parametrize("bands", [1, 4, 13])
def test_tiff_keeps_dtype_values_and_bands_in_any_stored_layout(tmp_path, dtype, bands):
    rng = np.random.default_rng(bands)
    hwc = (rng.random((9, 11, bands)) * 3000 - (1000 if dtype is np.int16 else 0)).astype(dtype)
    chw = np.moveaxis(hwc, -1, 0)
    tifffile.imwrite(tmp_path / "pages.tif", chw, photometric="minisblack")  # one page per band
    names = ["pages.tif"]
    if bands > 1:  # (H, W, C) interleaved and (C, H, W) planar samples of one page
        tifffile.imwrite(tmp_path / "contig.tif", hwc, photometric="minisblack", planarconfig="contig")
        tifffile.imwrite(tmp_path / "planar.tif", chw, photometric="minisblack", planarconfig="separate")
        names += ["contig.tif", "planar.tif"]
    for name in names:
        array, meta = read_image(tmp_path / name)
        assert array.dtype == dtype and np.array_equal(array, hwc), name
        assert meta.format == "tiff" and meta.layout_source == "file"


def test_a_single_band_tiff_is_h_w_1(tmp_path):
    tifffile.imwrite(tmp_path / "g.tif", np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000)
    array, meta = read_image(tmp_path / "g.tif")
    assert array.shape == (3, 4, 1) and array[2, 3, 0] == 11000 and meta.layout == "HW"


def test_npy_layout_is_detected_only_when_the_shape_leaves_one_answer(tmp_path):
    chw = np.arange(4 * 6 * 7, dtype=np.float32).reshape(4, 6, 7)
    np.save(tmp_path / "chw.npy", chw)
    np.save(tmp_path / "hwc.npy", np.moveaxis(chw, 0, -1))
    for name in ("chw.npy", "hwc.npy"):
        array, meta = read_image(tmp_path / name)
        assert np.array_equal(array, np.moveaxis(chw, 0, -1)) and meta.layout_source == "shape"
    np.save(tmp_path / "cube.npy", np.zeros((5, 5, 5), np.uint16))
    with pytest.raises(ImageReadError, match=r"cube.npy: array of shape \(5, 5, 5\): cannot tell which axis holds "
                                             r"the bands; declare the layout"):
        read_image(tmp_path / "cube.npy")
    array, meta = read_image(tmp_path / "cube.npy", layout="CHW")
    assert array.shape == (5, 5, 5) and meta.layout_source == "declared"


def test_a_declared_layout_that_does_not_fit_is_one_error(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros((4, 4), np.uint8))
    with pytest.raises(ImageReadError, match=r"flat.npy: array of shape \(4, 4\) does not have the declared layout"):
        read_image(tmp_path / "flat.npy", layout="HWC")


def test_sixteen_bit_png_keeps_its_values_eight_bit_png_is_rgb(tmp_path):
    Image.fromarray(np.array([[0, 3999]], np.uint16)).save(tmp_path / "g16.png")
    Image.fromarray(np.array([[0, 200]], np.uint8)).save(tmp_path / "g8.png")
    g16, g8 = read_image(tmp_path / "g16.png")[0], read_image(tmp_path / "g8.png")[0]
    assert g16.dtype == np.uint16 and g16[0, :, 0].tolist() == [0, 3999] and g16.shape == (1, 2, 1)
    assert g8.dtype == np.uint8 and g8.shape == (1, 2, 3) and g8[0, 1].tolist() == [200, 200, 200]


def test_the_reader_follows_the_content_not_the_extension(tmp_path):
    tifffile.imwrite(tmp_path / "really_a_tiff.png", np.full((3, 4, 5), 7, np.uint16), photometric="minisblack")
    array, meta = read_image(tmp_path / "really_a_tiff.png")
    assert meta.format == "tiff" and array.shape == (4, 5, 3)


def test_select_bands_picks_and_orders_and_names_a_bad_index():
    image = np.arange(2 * 2 * 4).reshape(2, 2, 4)
    assert np.array_equal(select_bands(image, [3, 0], "x"), image[..., [3, 0]])
    with pytest.raises(ImageReadError, match=r"x: bands \[0, 4\] asked for, but the image has 4 band\(s\) \(0..3\)"):
        select_bands(image, [0, 4], "x")


def test_geotiff_keeps_crs_transform_and_nodata(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    data = np.arange(3 * 8 * 10, dtype=np.uint16).reshape(3, 8, 10)
    transform = from_origin(500000.0, 4600000.0, 10.0, 10.0)
    with rasterio.open(tmp_path / "scene.tif", "w", driver="GTiff", height=8, width=10, count=3, dtype="uint16",
                       crs="EPSG:32633", transform=transform, nodata=0) as dst:
        dst.write(data)
    array, meta = read_image(tmp_path / "scene.tif")
    assert meta.format == "geotiff" and np.array_equal(array, np.moveaxis(data, 0, -1))
    assert meta.crs.to_epsg() == 32633 and meta.transform == transform and meta.nodata == 0
