//! Independent groups: services that compete for some cloud's scarce resource belong to one
//! group; groups share no binding capacity and are solved one by one.

use crate::model::Model;

/// Partitions the services into groups. Services `a` and `b` are in one group when both may
/// use a cloud whose capacity of a resource they both need is smaller than what all services
/// that may use it could ask for. Groups are ordered by their first service, members by
/// index.
pub fn groups(model: &Model) -> Vec<Vec<usize>> {
    let m = model.services.len();
    let mut parent: Vec<usize> = (0..m).collect();
    fn find(parent: &mut [usize], mut a: usize) -> usize {
        while parent[a] != a {
            parent[a] = parent[parent[a]];
            a = parent[a];
        }
        a
    }
    let rc = model.resource_count();
    for (i, cloud) in model.clouds.iter().enumerate() {
        for k in 0..rc {
            let users: Vec<usize> = (0..m)
                .filter(|&j| {
                    let s = &model.services[j];
                    s.cap[i] > 0 && s.demand[k] > 0
                })
                .collect();
            let most: i128 = users
                .iter()
                .map(|&j| {
                    let s = &model.services[j];
                    s.demand[k] * i128::from(s.cap[i].max(s.hold_cap[i]))
                })
                .sum();
            if most <= cloud.capacity[k] {
                continue;
            }
            if let Some((&first, rest)) = users.split_first() {
                for &other in rest {
                    let (a, b) = (find(&mut parent, first), find(&mut parent, other));
                    if a != b {
                        let (low, high) = if a < b { (a, b) } else { (b, a) };
                        parent[high] = low;
                    }
                }
            }
        }
    }
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut index_of_root = vec![usize::MAX; m];
    for j in 0..m {
        let root = find(&mut parent, j);
        if index_of_root[root] == usize::MAX {
            index_of_root[root] = groups.len();
            groups.push(Vec::new());
        }
        groups[index_of_root[root]].push(j);
    }
    groups
}
