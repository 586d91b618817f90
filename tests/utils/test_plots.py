import numpy as np

from dreamrelation.utils.plots import scatter_image


def test_scatter_puts_each_point_where_its_values_are() -> None:
    size = 200
    img = np.asarray(
        scatter_image(
            [("a", 0.25, 0.75, [0.2, 0.3], [0.6, 0.9]), ("b", 1.0, 0.0, [np.nan, np.nan], [np.nan, np.nan])],
            "x",
            "y",
            size=size,
        )
    )
    left, top = 48, 2 * 12 + 16  # the plot area's corner (see scatter_image)
    a = img[int(top + size * 0.25), int(left + size * 0.25)]
    b = img[int(top + size), int(left + size)]
    assert tuple(a) != (255, 255, 255) and tuple(b) != (255, 255, 255)
    # a's vertical whisker reaches y = 0.9, b has none above its point
    assert tuple(img[int(top + size * 0.12), int(left + size * 0.25)]) == tuple(a)
    assert tuple(img[int(top + size * 0.5), int(left + size)]) in {(0, 0, 0), (255, 255, 255)}
