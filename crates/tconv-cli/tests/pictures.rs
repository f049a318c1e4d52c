//! Pictures: SVGs rasterised and checked cell by cell against the library's data, SVG
//! snapshots, and the HTML player's self-containment and embedded frames.

use tconv::explain::overlap_report;
use tconv::{ConvParams, Geometry, Op};

mod common;

use common::{expect_file, scratch, tconv};

/// Rasterise an SVG (shapes only matter here, so no fonts are loaded).
fn raster(svg: &str) -> resvg::tiny_skia::Pixmap {
    let tree = resvg::usvg::Tree::from_str(svg, &resvg::usvg::Options::default()).unwrap();
    let size = tree.size().to_int_size();
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height()).unwrap();
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::default(),
        &mut pixmap.as_mut(),
    );
    pixmap
}

fn hex(c: resvg::tiny_skia::PremultipliedColorU8) -> String {
    format!("#{:02x}{:02x}{:02x}", c.red(), c.green(), c.blue())
}

/// Position of the first grid's top-left cell: (x, y) of its rect.
fn first_cell(svg: &str) -> (u32, u32) {
    let at = svg.find("class=\"cell").unwrap();
    let rect = &svg[svg[..at].rfind("<rect").unwrap()..at];
    let num = |key: &str| -> u32 {
        let s = &rect[rect.find(key).unwrap() + key.len()..];
        s[..s.find('"').unwrap()].parse().unwrap()
    };
    (num("x=\""), num("y=\""))
}

#[test]
fn overlap_heat_map_colours_match_the_counts() {
    const PALETTE: [&str; 7] = [
        "#ffffff", "#deebf7", "#9ecae1", "#6baed6", "#3182bd", "#08519c", "#08306b",
    ];
    let d = scratch("overlap");
    let svg_path = d.join("k3s2.svg");
    let png_path = d.join("k3s2.png");
    let o = tconv(&[
        "overlap",
        "--kernel",
        "3",
        "--stride",
        "2",
        "--svg",
        svg_path.to_str().unwrap(),
        "--png",
        png_path.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.lines().any(|l| l.starts_with(
            "uneven overlap: interior positions receive 1 to 4 kernel taps (ratio 4.00)"
        )),
        "{text}"
    );
    assert!(
        text.contains("kernel 4, padding 1, output_padding 1"),
        "{text}"
    );
    assert!(std::fs::read(&png_path).unwrap().starts_with(b"\x89PNG"));

    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let g = Geometry::new(
        Op::ConvTranspose,
        &[1, 1, 5, 5],
        &[1, 1, 3, 3],
        None,
        &ConvParams::new().stride(&[2]),
    )
    .unwrap();
    let report = overlap_report(&g);
    assert_eq!(report.extents, vec![11, 11]);
    let pix = raster(&svg);
    let (x0, y0) = first_cell(&svg);
    let cell = 34;
    for r in 0..11u32 {
        for c in 0..11u32 {
            // Sample inside the cell, away from the centred number.
            let px = pix.pixel(x0 + c * cell + 5, y0 + r * cell + 5).unwrap();
            let want = PALETTE[report.counts[(r * 11 + c) as usize].min(6)];
            assert_eq!(hex(px), want, "cell ({r}, {c})");
        }
    }
    // The k3 s2 pattern: counts 1 and 2 alternate along an edge row, 4 in the interior.
    assert_eq!(&report.counts[..5], &[1, 1, 2, 1, 2]);
    assert_eq!(report.counts[2 * 11 + 2], 4);
    expect_file("overlap_k3s2.svg", &svg);
}

#[test]
fn uniform_and_one_dimensional_verdicts() {
    let o = tconv(&[
        "overlap",
        "--kernel",
        "4",
        "--stride",
        "2",
        "--padding",
        "1",
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("uniform overlap: every interior output position receives 4")),
        "{text}"
    );
    let o = tconv(&[
        "overlap", "--kernel", "3", "--stride", "2", "--dims", "1", "--size", "4",
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("  1 1 2 1 2 1 2 1 1\n"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("uneven")));
    let o = tconv(&["overlap", "--kernel", "2", "--stride", "3", "--dims", "1"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.lines().any(|l| l.starts_with("uneven overlap: some interior positions receive no kernel tap")), "{text}");
}

#[test]
fn explain_svg_marks_every_kind_of_cell() {
    let d = scratch("explain");
    let p = d.join("e.svg");
    let o = tconv(&[
        "explain",
        "conv-transpose",
        "--input",
        "[[1,2],[3,4]]",
        "--weight",
        "[[1,2,3],[4,5,6],[7,8,9]]",
        "--stride",
        "2",
        "--padding",
        "1",
        "--output-padding",
        "1",
        "--svg",
        p.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let svg = std::fs::read_to_string(&p).unwrap();
    let count = |class: &str| svg.matches(&format!("class=\"cell {class}\"")).count();
    // Zero-inserted view 6x6: 4 inputs, 5 inserted zeros, 27 padding zeros.
    assert_eq!(count("inserted"), 5);
    assert_eq!(count("padding"), 27);
    // Uncropped output canvas 6x6: 16 kept (7 of them from output_padding), 20 cropped.
    assert_eq!(count("cropped"), 20);
    assert_eq!(count("extra"), 7);
    // Rasterised: a cropped cell is drawn in the cropped colour.
    let pix = raster(&svg);
    let at = svg.find("class=\"cell cropped\"").unwrap();
    let rect = &svg[svg[..at].rfind("<rect").unwrap()..at];
    let num = |key: &str| -> u32 {
        let s = &rect[rect.find(key).unwrap() + key.len()..];
        s[..s.find('"').unwrap()].parse().unwrap()
    };
    assert_eq!(
        hex(pix.pixel(num("x=\"") + 6, num("y=\"") + 6).unwrap()),
        "#f6c9c4"
    );
    expect_file("explain_conv_transpose_s2_p1_op1.svg", &svg);
}

/// The JSON the page's script plays.
fn frames_of(html: &str) -> serde_json::Value {
    let open = "<script type=\"application/json\" id=\"tconv-frames\">";
    let start = html.find(open).unwrap() + open.len();
    let end = start + html[start..].find("</script>").unwrap();
    serde_json::from_str(&html[start..end].replace("<\\/", "</")).unwrap()
}

#[test]
fn html_player_is_self_contained_and_carries_the_library_steps() {
    let d = scratch("html");
    let p = d.join("e.html");
    let o = tconv(&[
        "explain",
        "conv-transpose",
        "--input",
        "[[1,2],[3,4]]",
        "--weight",
        "[[1,0],[0,-1]]",
        "--stride",
        "2",
        "--html",
        p.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(&p).unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "external reference"
    );
    assert!(
        !html.contains(" src=") && !html.contains(" href="),
        "external file"
    );
    for control in [
        "class=\"play\"",
        "class=\"next\"",
        "class=\"prev\"",
        "ArrowRight",
        "tabindex=\"0\"",
    ] {
        assert!(html.contains(control), "missing {control}");
    }
    let data = frames_of(&html);
    let player = &data["players"][0];
    let frames = player["frames"].as_array().unwrap();
    // Start, one frame per input element, done.
    assert_eq!(frames.len(), 4 + 2);
    assert_eq!(frames[1]["hot_input"], serde_json::json!([0]));
    assert!(frames[4]["text"]
        .as_str()
        .unwrap()
        .starts_with("x[1,1] = 4"));
    // The last frame's output is the library's result.
    let last: Vec<&str> = frames.last().unwrap()["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        last,
        ["1", "0", "2", "0", "0", "-1", "0", "-2", "3", "0", "4", "0", "0", "-3", "0", "-4"]
    );

    // A conv: one frame per output element with its dot product.
    let p2 = d.join("c.html");
    let o = tconv(&[
        "explain",
        "conv",
        "--input",
        "[[1,2,3],[4,5,6],[7,8,9]]",
        "--weight",
        "[[1,0],[0,-1]]",
        "--html",
        p2.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let data = frames_of(&std::fs::read_to_string(&p2).unwrap());
    let frames = data["players"][0]["frames"].as_array().unwrap().clone();
    assert_eq!(frames.len(), 1 + 4);
    assert_eq!(
        frames[1]["formula"],
        "y(0,0) = 1·1 + 2·0 + 4·0 + 5·(-1) = -4"
    );
    assert_eq!(frames[1]["hot_input"], serde_json::json!([0, 1, 3, 4]));
}

#[test]
fn demo_html_has_the_three_examples() {
    let d = scratch("demo");
    let p = d.join("demo.html");
    let o = tconv(&["demo", "--html", p.to_str().unwrap()]);
    assert!(o.status.success());
    let data = frames_of(&std::fs::read_to_string(&p).unwrap());
    assert_eq!(data["players"].as_array().unwrap().len(), 3);
}

#[test]
fn pictures_refuse_what_they_cannot_draw() {
    let d = scratch("refuse");
    let p = d.join("x.svg");
    let o = tconv(&[
        "explain",
        "conv-transpose",
        "--input",
        "[[1,2],[3,4]]",
        "--weight",
        "[[[1]],[[2]]]",
        "--svg",
        p.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("one input and one output channel"));
    assert!(!p.exists());
}
