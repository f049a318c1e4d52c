//! `.npy` reader and writer: byte orders, Fortran order, versions, malformed headers.

use ndarray::{array, ArrayD};
use tconv::npy::{parse_npy, to_npy_bytes, NpyArray};
use tconv::ErrorKind;

/// A hand-made .npy file (version 1.0).
fn npy(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.to_string();
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend_from_slice(&(h.len() as u16).to_le_bytes());
    v.extend_from_slice(h.as_bytes());
    v.extend_from_slice(data);
    v
}

fn message(bytes: &[u8]) -> String {
    let e = parse_npy(bytes).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Npy { .. }), "{e:?}");
    e.to_string()
}

#[test]
fn round_trip_f32_and_f64() {
    let a = array![[1.5f32, -2.0, 3.25], [4.0, 5.0, 6.0]].into_dyn();
    assert_eq!(
        parse_npy(&to_npy_bytes(&a.view())).unwrap(),
        NpyArray::F32(a)
    );
    let b = array![1.0f64, 1e-300, -7.5].into_dyn();
    assert_eq!(
        parse_npy(&to_npy_bytes(&b.view())).unwrap(),
        NpyArray::F64(b)
    );
    let s = ArrayD::from_elem(vec![], 2.0f64);
    assert_eq!(
        parse_npy(&to_npy_bytes(&s.view())).unwrap(),
        NpyArray::F64(s)
    );
}

#[test]
fn header_is_aligned_to_64_bytes() {
    let a = array![1.0f32].into_dyn();
    let bytes = to_npy_bytes(&a.view());
    assert_eq!((bytes.len() - 4) % 64, 0);
}

#[test]
fn big_endian() {
    let data: Vec<u8> = [1.0f32, 2.0, 3.0]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    let f = npy(
        "{'descr': '>f4', 'fortran_order': False, 'shape': (3,), }",
        &data,
    );
    assert_eq!(
        parse_npy(&f).unwrap(),
        NpyArray::F32(array![1.0f32, 2.0, 3.0].into_dyn())
    );
    let data: Vec<u8> = [1.0f64, -2.0]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    let f = npy(
        "{'descr': '>f8', 'fortran_order': False, 'shape': (2,), }",
        &data,
    );
    assert_eq!(
        parse_npy(&f).unwrap(),
        NpyArray::F64(array![1.0f64, -2.0].into_dyn())
    );
}

#[test]
fn fortran_order_is_read_in_logical_order() {
    // [[1,2,3],[4,5,6]] stored column-major: 1,4,2,5,3,6.
    let data: Vec<u8> = [1.0f64, 4.0, 2.0, 5.0, 3.0, 6.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let f = npy(
        "{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }",
        &data,
    );
    let want = array![[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]].into_dyn();
    assert_eq!(parse_npy(&f).unwrap(), NpyArray::F64(want));
}

#[test]
fn version_2_header() {
    let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }\n";
    let mut v = b"\x93NUMPY\x02\x00".to_vec();
    v.extend_from_slice(&(h.len() as u32).to_le_bytes());
    v.extend_from_slice(h.as_bytes());
    v.extend_from_slice(&7.0f32.to_le_bytes());
    assert_eq!(
        parse_npy(&v).unwrap(),
        NpyArray::F32(array![7.0f32].into_dyn())
    );
}

#[test]
fn malformed_files_are_errors_that_say_why() {
    assert!(message(b"hello").contains("not a .npy file"));
    assert!(message(b"\x93NUMPY\x09\x00\x00\x00").contains("version 9"));
    let mut truncated = b"\x93NUMPY\x01\x00".to_vec();
    truncated.extend_from_slice(&1000u16.to_le_bytes());
    truncated.extend_from_slice(b"{'descr'");
    assert!(message(&truncated).contains("header claims 1000 bytes"));
    let f = npy(
        "{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }",
        &[0; 8],
    );
    assert!(message(&f).contains("unsupported dtype '<i8'"));
    let f = npy(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }",
        &[0; 8],
    );
    assert!(message(&f).contains("needs 16 data bytes, but the file has 8"));
    let f = npy("{'descr': '<f4', 'shape': (1,), }", &[0; 4]);
    assert!(message(&f).contains("no 'fortran_order'"));
    let f = npy(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (a,), }",
        &[0; 4],
    );
    assert!(message(&f).contains("bad extent"));
    let f = npy("['descr']", &[]);
    assert!(message(&f).contains("not a dict"));
}

#[test]
fn absurd_shapes_do_not_allocate() {
    let f = npy(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }",
        &[0; 4],
    );
    assert!(message(&f).contains("more than the limit"));
    let f = npy(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (100000000,), }",
        &[0; 4],
    );
    assert!(message(&f).contains("needs 400000000 data bytes, but the file has 4"));
}
